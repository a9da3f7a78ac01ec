//! The node agent: makes the replicas bound to its node run in its [`Runtime`], restarts
//! them by their restart policy with exponential backoff (the first restart is immediate),
//! stops and deletes replicas marked stopped, stops orphans, re-adopts what already runs
//! after a restart, reports status in batched writes, and heartbeats its node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::cache::Change;
use crate::engine::queue::WorkQueue;
use crate::engine::Ctx;
use crate::model::object::{
    DesiredState, EnvVar, ExitStatus, Kind, Object, Phase, Replica, ReplicaStatus, Resources, Taint,
};
use crate::node::probes::ProbeView;
use crate::runtime::{Runtime, RuntimeEvent, Workload, WorkloadState};
use crate::store::{delete_op, Op};

mod backoff;
mod heartbeat;
mod init;
mod network;
mod probing;
mod resolve;
mod start;
mod status;

use backoff::Backoff;
use start::mark_running;

/// How an agent describes and runs its node.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name (a DNS-1123 label).
    pub node: String,
    /// Node labels placement matches.
    pub labels: BTreeMap<String, String>,
    /// Node taints: replicas that do not tolerate them are kept off (NoSchedule) or avoid
    /// the node (PreferNoSchedule). Added to the node's taints when it registers.
    pub taints: Vec<Taint>,
    /// Addresses replicas on this node are reached at.
    pub addresses: Vec<String>,
    /// What the machine offers to replicas.
    pub capacity: Resources,
    /// Most replicas this node takes (0: no limit).
    pub max_replicas: u32,
    /// How often the node heartbeats.
    pub heartbeat: Duration,
    /// Environment every workload gets (before its own).
    pub extra_env: Vec<EnvVar>,
    /// Replicas started or stopped at once.
    pub concurrency: usize,
    /// Second restart delay; it doubles per failure up to `restart_backoff_max`.
    pub restart_backoff_base: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
    /// A run at least this long resets the backoff.
    pub stable_run: Duration,
    /// Where this agent serves its manager (reported in the node's status), if it does.
    pub endpoint: String,
    /// The node's cluster DNS server, handed to every workload (see
    /// [`WorkloadDns`](crate::runtime::WorkloadDns)).
    pub dns: Option<std::net::SocketAddr>,
    /// The cluster domain workloads search (`orch.local`).
    pub dns_domain: String,
    /// Further domains workloads search after the cluster domain, each as `NAMESPACE.ALIAS`
    /// then `ALIAS` (default `svc.cluster.local`, the Kubernetes names the DNS server also
    /// answers).
    pub dns_alias_domains: Vec<String>,
    /// Where named local volumes live; `None`: volumes are refused here.
    pub volumes: Option<crate::node::VolumeLayout>,
    /// Host paths replicas may mount (a mount's real path, symlinks resolved, must be under
    /// one of these); empty: none.
    pub allowed_host_paths: Vec<std::path::PathBuf>,
    /// The node's replica networking; `None`: every replica is on the host network.
    pub network: Option<AgentNetwork>,
    /// How long after the agent starts containers that need a network of their own wait
    /// for the node's subnet before they start on the host network (default 10 s).
    pub network_grace: Duration,
}

/// The [`Network`](crate::Network) an agent gives containers their own network with.
#[derive(Clone)]
pub struct AgentNetwork(pub Arc<dyn crate::Network>);

impl std::fmt::Debug for AgentNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.describe())
    }
}

impl AgentConfig {
    /// Defaults for a node called `node`.
    pub fn new(node: &str) -> AgentConfig {
        AgentConfig {
            node: node.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            addresses: vec!["127.0.0.1".into()],
            capacity: Resources::default(),
            max_replicas: 0,
            heartbeat: Duration::from_secs(1),
            extra_env: Vec::new(),
            concurrency: 64,
            restart_backoff_base: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(30),
            stable_run: Duration::from_secs(10),
            endpoint: String::new(),
            dns: None,
            dns_domain: "orch.local".into(),
            dns_alias_domains: vec!["svc.cluster.local".into()],
            volumes: None,
            allowed_host_paths: Vec::new(),
            network: None,
            network_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Default)]
struct State {
    workloads: HashMap<String, Workload>,
    busy: HashSet<String>,
    backoff: HashMap<String, Backoff>,
    /// What the probes say of each probed workload: the run (runtime id) and its view.
    probed: HashMap<String, (String, ProbeView)>,
    /// Replicas' init steps (running, done or failed), by workload id.
    init: HashMap<String, init::InitRun>,
    /// Init runs started so far (numbers them).
    init_runs: u64,
}

/// One node's agent.
pub struct Agent {
    ctx: Arc<Ctx>,
    runtime: Arc<dyn Runtime>,
    cfg: AgentConfig,
    state: Mutex<State>,
    net: Mutex<network::NetState>,
    queue: Arc<WorkQueue<String>>,
    /// The revision of this agent's last heartbeat write: a cached node object older than
    /// it is stale (the cache is catching up), so the next heartbeat reads the store.
    heartbeat_rev: std::sync::atomic::AtomicU64,
}

/// What reconciling one replica produced.
#[derive(Default)]
struct Outcome {
    /// The status the replica should have (`None`: as it is); written, or held a moment
    /// while the replica crash-loops (see [`STATUS_HOLD`]).
    status: Option<ReplicaStatus>,
    /// Other writes (deletes).
    ops: Vec<Op>,
    requeue_after: Option<Duration>,
}

fn id_of(r: &Replica) -> String {
    r.runtime_name()
}

fn key_of_id(id: &str) -> String {
    let (ns, name) = id.split_once('.').unwrap_or(("", id));
    Kind::Replica.key(ns, name)
}

fn id_of_key(key: &str) -> String {
    let k = crate::model::object::ObjectKey::parse(key);
    let (ns, name) = k.as_ref().map_or(("", ""), |k| (&*k.namespace, &*k.name));
    format!("{ns}.{name}")
}

impl Agent {
    /// An agent for `cfg.node` running workloads in `runtime`.
    pub fn new(ctx: Arc<Ctx>, runtime: Arc<dyn Runtime>, cfg: AgentConfig) -> Arc<Agent> {
        let queue = WorkQueue::new(ctx.config.retry_base, ctx.config.retry_max);
        let net = Mutex::new(network::NetState::new(&cfg.node));
        Arc::new(Agent {
            ctx,
            runtime,
            cfg,
            state: Mutex::default(),
            net,
            queue,
            heartbeat_rev: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The runtime this agent drives.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the agent until the engine is cancelled. Workloads keep running after it returns.
    pub async fn run(self: Arc<Self>) {
        let cancel = self.ctx.cancel.clone();
        let started = tokio::time::Instant::now();
        // Register before anything else so the scheduler can place work here.
        let mut delay = Duration::from_millis(100);
        while let Err(e) = self.heartbeat().await {
            tracing::warn!(node = %self.cfg.node, error = %e, "agent: cannot register node; retrying");
            tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        // Adopt what the runtime already runs.
        match self.runtime.list().await {
            Ok(list) => {
                let mut g = self.lock();
                for w in list {
                    self.queue.add(key_of_id(&w.id));
                    g.workloads.insert(w.id.clone(), w);
                }
            }
            Err(e) => {
                tracing::error!(node = %self.cfg.node, error = %e, "agent: cannot list workloads")
            }
        }
        // Their network attachments: kept for what runs or is bound here, else detached.
        self.adopt_attachments().await;
        let node = self.cfg.node.clone();
        let mut changes = self.ctx.cache.subscribe(move |c| {
            c.replicas()
                .any(|r| r.spec.node.as_deref() == Some(node.as_str()))
        });
        let mut runtime_events = self.runtime.events();
        let tasks = [
            {
                let me = self.clone();
                tokio::spawn(async move {
                    let mut resync = tokio::time::interval(me.ctx.config.resync);
                    loop {
                        tokio::select! {
                            c = changes.recv() => match c {
                                Some(Change::Resync) => me.enqueue_all(),
                                Some(Change::Object { key, .. }) => me.queue.add(key.to_string()),
                                None => break,
                            },
                            _ = resync.tick() => me.enqueue_all(),
                        }
                    }
                })
            },
            {
                let me = self.clone();
                tokio::spawn(async move {
                    loop {
                        match runtime_events.recv().await {
                            Ok(RuntimeEvent::Exited { id, status }) => me.exited(&id, None, status),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                me.refresh_workloads().await
                            }
                            Err(_) => break,
                        }
                    }
                })
            },
            {
                let me = self.clone();
                tokio::spawn(me.probe_loop())
            },
            {
                let me = self.clone();
                tokio::spawn(me.network_loop(started))
            },
            {
                let me = self.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(me.cfg.heartbeat);
                    loop {
                        tick.tick().await;
                        match me.heartbeat().await {
                            Err(e) if e.is_transient() => {
                                tracing::debug!(node = %me.cfg.node, error = %e, "agent: heartbeat failed");
                            }
                            // Refused (a removed node, a permission): say so, every time.
                            Err(e) => {
                                tracing::warn!(node = %me.cfg.node, error = %e, "agent: heartbeat refused");
                            }
                            Ok(()) => {}
                        }
                    }
                })
            },
        ];
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => break,
                b = self.queue.next_batch(2_000) => b,
            };
            self.process(batch).await;
        }
        tasks.iter().for_each(|t| t.abort());
    }

    /// Workload `id` exited (run `run` of it, if it must be that one): reconcile it.
    fn exited(&self, id: &str, run: Option<&str>, status: ExitStatus) {
        if let Some(w) = self
            .lock()
            .workloads
            .get_mut(id)
            .filter(|w| run.is_none_or(|r| w.runtime_id == r))
            // An exit from before this run started is an earlier run's (an init step's).
            .filter(|w| status.at.is_none_or(|at| at >= w.started_at))
        {
            w.state = WorkloadState::Exited(status);
        }
        self.queue.add(key_of_id(id));
    }

    async fn refresh_workloads(&self) {
        if let Ok(list) = self.runtime.list().await {
            let mut g = self.lock();
            let mut list: HashMap<String, Workload> =
                list.into_iter().map(|w| (w.id.clone(), w)).collect();
            // A runtime that does not report addresses: the run's address stays known.
            for (id, w) in &mut list {
                if let Some(old) = g.workloads.get(id).filter(|o| o.runtime_id == w.runtime_id) {
                    if w.ip.is_none() {
                        w.ip = old.ip.clone();
                    }
                }
            }
            g.workloads = list;
            for id in g.workloads.keys() {
                self.queue.add(key_of_id(id));
            }
        }
    }

    fn enqueue_all(&self) {
        for r in self.ctx.cache.replicas_on_node(&self.cfg.node) {
            self.queue
                .add(Kind::Replica.key(&r.metadata.namespace, &r.metadata.name));
        }
        for id in self.lock().workloads.keys() {
            self.queue.add(key_of_id(id));
        }
    }

    async fn reconcile_replica(
        self: &Arc<Self>,
        key: &str,
        id: &str,
        replica: Option<Replica>,
    ) -> Outcome {
        let id = id.to_string();
        if let Some(o) = self.init_outcome(&id, replica.as_ref()).await {
            return o;
        }
        let workload = {
            let g = self.lock();
            if g.busy.contains(&id) {
                return Outcome::default();
            }
            g.workloads.get(&id).cloned()
        };
        match (replica, workload) {
            (None, None) => {
                // Gone without a stop here (its node removed, say): nothing may stay attached.
                self.detach(&id).await;
                Outcome::default()
            }
            (None, Some(w)) => {
                tracing::info!(node = %self.cfg.node, workload = %id, "agent: stopping orphan");
                self.stop_in_background(&id, &w, None, key);
                Outcome::default()
            }
            (Some(r), w) if r.spec.desired == DesiredState::Stopped => {
                self.reconcile_stopped(key, &r, w).await
            }
            (Some(r), Some(w))
                if w.replica_uid != r.metadata.uid || w.template_hash.contains(init::INIT_MARK) =>
            {
                // Another replica's, or an init step run before the agent restarted (the
                // steps run again).
                self.stop_in_background(&id, &w, None, key);
                Outcome::default()
            }
            (Some(r), Some(w)) => match &w.state {
                WorkloadState::Running => {
                    let settling = if crate::node::probes::gates_readiness(&r.spec.template) {
                        None
                    } else {
                        self.settle_left(&id)
                    };
                    let mut st = r.status.clone();
                    mark_running(&mut st, &w, &r.spec.template, settling.is_some());
                    if let Some(view) = self.probe_view(&id, &w.runtime_id) {
                        view.apply(&r.spec.template, &mut st);
                    }
                    Outcome {
                        status: Some(st),
                        ops: Vec::new(),
                        requeue_after: settling,
                    }
                }
                WorkloadState::Exited(status) => self.handle_exit(&r, status.clone()).await,
            },
            (Some(r), None) => {
                if !r.status.runtime_id.is_empty() && r.status.phase.is_up() {
                    // It ran here before and the runtime no longer knows it.
                    self.handle_exit(&r, ExitStatus::default()).await
                } else if r.status.reason.is_start_backoff() {
                    self.handle_exit(&r, r.status.last_exit.clone().unwrap_or_default())
                        .await
                } else {
                    self.start(&r, false).await
                }
            }
        }
    }

    async fn reconcile_stopped(
        self: &Arc<Self>,
        key: &str,
        r: &Replica,
        w: Option<Workload>,
    ) -> Outcome {
        let id = id_of(r);
        match w {
            Some(w) if w.state == WorkloadState::Running => {
                self.stop_in_background(&id, &w, Some(r), key);
                let mut st = r.status.clone();
                st.phase = Phase::Stopping;
                Outcome {
                    status: Some(st),
                    ops: Vec::new(),
                    requeue_after: None,
                }
            }
            Some(_) => {
                if let Err(e) = self.runtime.remove(&id).await {
                    tracing::warn!(workload = %id, error = %e, "agent: remove failed");
                }
                self.detach(&id).await;
                self.lock().workloads.remove(&id);
                self.lock().backoff.remove(&id);
                Outcome {
                    ops: vec![delete_op(&Object::Replica(r.clone()))],
                    status: None,
                    requeue_after: None,
                }
            }
            None => {
                self.lock().backoff.remove(&id);
                if !r.spec.template.init.is_empty() {
                    // The last init step's run may be left in the runtime (a failed step).
                    self.remove_step_run(&id).await;
                }
                self.detach(&id).await;
                Outcome {
                    ops: vec![delete_op(&Object::Replica(r.clone()))],
                    status: None,
                    requeue_after: None,
                }
            }
        }
    }

    fn stop_in_background(
        self: &Arc<Self>,
        id: &str,
        w: &Workload,
        r: Option<&Replica>,
        key: &str,
    ) {
        if !self.lock().busy.insert(id.to_string()) {
            return;
        }
        let (signal, grace) = match r {
            Some(r) => (
                r.spec.template.stop_signal().to_string(),
                r.spec.template.stop_grace(),
            ),
            None => ("SIGTERM".to_string(), Duration::from_secs(10)),
        };
        let me = self.clone();
        let (id, key, running) = (
            id.to_string(),
            key.to_string(),
            w.state == WorkloadState::Running,
        );
        let name = r.map(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
        tokio::spawn(async move {
            if running {
                match me.runtime.stop(&id, &signal, grace).await {
                    Ok(status) => {
                        if let Some((ns, n)) = &name {
                            me.ctx
                                .recorder
                                .with_source(&format!("agent/{}", me.cfg.node))
                                .normal(
                                    Kind::Replica,
                                    ns,
                                    n,
                                    "Stopped",
                                    format!("stopped ({status})"),
                                );
                        }
                    }
                    Err(e) => tracing::warn!(workload = %id, error = %e, "agent: stop failed"),
                }
            }
            if let Err(e) = me.runtime.remove(&id).await {
                tracing::debug!(workload = %id, error = %e, "agent: remove failed");
            }
            me.detach(&id).await;
            {
                let mut g = me.lock();
                g.workloads.remove(&id);
                g.busy.remove(&id);
            }
            me.queue.add(key);
        });
    }
}
