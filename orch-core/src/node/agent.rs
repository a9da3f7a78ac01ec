//! The node agent: makes the replicas bound to its node run in its [`Runtime`], restarts
//! them by their restart policy with exponential backoff (the first restart is immediate),
//! stops and deletes replicas marked stopped, stops orphans, re-adopts what already runs
//! after a restart, reports status in batched writes, and heartbeats its node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::engine::cache::Change;
use crate::engine::queue::WorkQueue;
use crate::engine::Ctx;
use crate::model::object::{
    BoundPort, DesiredState, EnvVar, ExitStatus, Kind, Metadata, Node, NodeCondition, NodeSpec,
    NodeStatus, Object, Phase, Replica, ReplicaStatus, Resources, Taint,
};
use crate::model::quantity::Timestamp;
use crate::runtime::{
    MountFiles, MountSource, Runtime, RuntimeError, RuntimeEvent, Workload, WorkloadDns,
    WorkloadMount, WorkloadSpec, WorkloadState,
};
use crate::store::{create_op, delete_op, update_op, Op, StoreError};

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
    /// The node's cluster DNS server, handed to every workload (see [`WorkloadDns`]).
    pub dns: Option<std::net::SocketAddr>,
    /// The cluster domain workloads search (`orch.local`).
    pub dns_domain: String,
    /// Where named local volumes live (`DIR/NAME`); `None`: volumes are refused here.
    pub volume_dir: Option<std::path::PathBuf>,
    /// Host paths replicas may mount (a mount's real path, symlinks resolved, must be under
    /// one of these); empty: none.
    pub allowed_host_paths: Vec<std::path::PathBuf>,
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
            volume_dir: None,
            allowed_host_paths: Vec::new(),
        }
    }
}

/// The restart delay after `failures` consecutive failed runs: 0, base, 2·base, ... up to max.
pub fn restart_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures == 0 {
        Duration::ZERO
    } else {
        base.saturating_mul(1u32 << (failures - 1).min(20)).min(max)
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    last_start: Option<Instant>,
    retry_at: Option<Instant>,
    /// The delay before `retry_at` and the wall-clock time it stands for, as the status says
    /// them (fixed when the delay is chosen, so re-reconciling rewrites nothing).
    retry_delay: Duration,
    retry_wall: Option<Timestamp>,
    /// Why the last start failed (`reason`, message), until a start succeeds: the back-off
    /// status keeps saying it instead of a bare exit code.
    start_error: Option<(&'static str, String)>,
    /// A status not yet written (the replica's uid, the status): the base of the next
    /// reconcile, written when [`STATUS_HOLD`] has passed since `last_write`.
    held: Option<(String, ReplicaStatus)>,
    /// When this agent last wrote the replica's status.
    last_write: Option<Instant>,
    /// When the last restart event of a crash loop was recorded.
    last_event: Option<Instant>,
}

#[derive(Default)]
struct State {
    workloads: HashMap<String, Workload>,
    busy: HashSet<String>,
    backoff: HashMap<String, Backoff>,
}

/// One node's agent.
pub struct Agent {
    ctx: Arc<Ctx>,
    runtime: Arc<dyn Runtime>,
    cfg: AgentConfig,
    state: Mutex<State>,
    queue: Arc<WorkQueue<String>>,
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

/// Consecutive quick failures from which a replica counts as crash-looping.
const CRASH_LOOP: u32 = 3;

/// While a replica crash-loops its status is written at most once per this period: the
/// restarts in between are counted in the agent and written together, so a replica that
/// crashes hundreds of times a second costs a few store revisions a second, not one per
/// restart. A change of readiness is never held.
const STATUS_HOLD: Duration = Duration::from_millis(500);

/// A replica restarted after an exit and without a readiness probe is Ready only once it
/// has stayed up this long (or the stable-run period, if shorter).
const RESTART_SETTLE: Duration = Duration::from_millis(500);

/// At most one restart event per crash-looping replica per this period.
const CRASH_EVENT_EVERY: Duration = Duration::from_secs(10);

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

fn with_status(r: &Replica, status: ReplicaStatus) -> Option<Op> {
    (status != r.status).then(|| {
        let mut r = r.clone();
        r.status = status;
        update_op(&Object::Replica(r))
    })
}

impl Agent {
    /// An agent for `cfg.node` running workloads in `runtime`.
    pub fn new(ctx: Arc<Ctx>, runtime: Arc<dyn Runtime>, cfg: AgentConfig) -> Arc<Agent> {
        let queue = WorkQueue::new(ctx.config.retry_base, ctx.config.retry_max);
        Arc::new(Agent {
            ctx,
            runtime,
            cfg,
            state: Mutex::default(),
            queue,
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

    fn node_status(&self, unavailable: &[(String, String)]) -> NodeStatus {
        let info = self.runtime.info();
        NodeStatus {
            endpoint: self.cfg.endpoint.clone(),
            addresses: self.cfg.addresses.clone(),
            capacity: self.cfg.capacity.clone(),
            max_replicas: self.cfg.max_replicas,
            runtimes: self
                .runtime
                .offers()
                .into_iter()
                .filter(|n| !unavailable.iter().any(|(u, _)| u == n))
                .map(|n| {
                    if n == "fake" {
                        "process".to_string()
                    } else {
                        n
                    }
                })
                .collect(),
            runtime_problems: unavailable
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect(),
            condition: NodeCondition::Ready,
            heartbeat: Some(Timestamp::now()),
            limits: info.limits_note,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            volumes: self.volumes(),
        }
    }

    /// The named volumes in the volume directory.
    fn volumes(&self) -> Vec<String> {
        let Some(dir) = &self.cfg.volume_dir else {
            return Vec::new();
        };
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    /// The template with `valueFrom` variables filled in, and its mounts resolved: secret and
    /// config contents read from the store, volume directories created on first use, host
    /// paths checked against the node's allowed prefixes (symlinks resolved first). An error
    /// names what is missing or refused.
    async fn resolve(
        &self,
        r: &Replica,
    ) -> Result<(crate::model::object::Template, Vec<WorkloadMount>), String> {
        let t = &r.spec.template;
        let ns = r.metadata.namespace.as_str();
        let mut data: HashMap<(bool, String), std::collections::BTreeMap<String, String>> =
            HashMap::new();
        for (secret, name) in t.references() {
            let kind = if secret { Kind::Secret } else { Kind::Config };
            let what = if secret { "secret" } else { "config" };
            let obj = crate::store::get_object(&*self.ctx.store, kind, ns, name)
                .await
                .map_err(|e| format!("cannot read {what} {ns}/{name}: {e}"))?;
            let values = match obj {
                Some(Object::Secret(s)) => s.data,
                Some(Object::Config(c)) => c.data,
                _ => return Err(format!("{what} {ns}/{name} does not exist")),
            };
            data.insert((secret, name.to_string()), values);
        }
        let mut template = (**t).clone();
        for e in &mut template.env {
            // `valueFrom` stays set: the runtime expands `$(VAR)` in plain values only.
            if let Some(f) = e.value_from.clone() {
                let (secret, name) = match (&f.secret, &f.config) {
                    (Some(n), _) => (true, n),
                    (_, Some(n)) => (false, n),
                    _ => continue,
                };
                let what = if secret { "secret" } else { "config" };
                e.value = data
                    .get(&(secret, name.clone()))
                    .and_then(|d| d.get(&f.key))
                    .cloned()
                    .ok_or(format!(
                        "env {}: {what} {ns}/{name} has no key {:?}",
                        e.name, f.key
                    ))?;
            }
        }
        let mut mounts = Vec::new();
        for m in &t.mounts {
            let source = if let Some(name) = m.secret.as_ref().or(m.config.as_ref()) {
                let secret = m.secret.is_some();
                let files = data
                    .get(&(secret, name.clone()))
                    .map(|d| {
                        d.iter()
                            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                            .collect()
                    })
                    .unwrap_or_default();
                MountSource::Files(MountFiles { secret, files })
            } else if let Some(v) = &m.volume {
                let dir = self.cfg.volume_dir.as_ref().ok_or(format!(
                    "volume {v}: node {} keeps no volumes",
                    self.cfg.node
                ))?;
                let path = dir.join(v);
                std::fs::create_dir_all(&path)
                    .map_err(|e| format!("volume {v}: cannot create {}: {e}", path.display()))?;
                MountSource::Dir(path)
            } else if let Some(h) = &m.host_path {
                MountSource::Dir(self.allowed_host_path(h)?)
            } else {
                MountSource::Tmpfs
            };
            mounts.push(WorkloadMount {
                path: m.path.clone(),
                read_only: m.read_only || m.secret.is_some() || m.config.is_some(),
                source,
            });
        }
        Ok((template, mounts))
    }

    /// `path`'s real location (symlinks resolved), if it is under an allowed prefix.
    fn allowed_host_path(&self, path: &str) -> Result<std::path::PathBuf, String> {
        let refused = |why: String| {
            format!(
                "hostPath {path}: {why}; node {} allows {}",
                self.cfg.node,
                if self.cfg.allowed_host_paths.is_empty() {
                    "no host paths (orchd --allow-host-path PREFIX)".to_string()
                } else {
                    self.cfg
                        .allowed_host_paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        };
        let real = std::fs::canonicalize(path).map_err(|e| refused(e.to_string()))?;
        let allowed = self
            .cfg
            .allowed_host_paths
            .iter()
            .any(|prefix| std::fs::canonicalize(prefix).is_ok_and(|p| real.starts_with(p)));
        if allowed {
            Ok(real)
        } else if real != std::path::Path::new(path) {
            Err(refused(format!(
                "it resolves to {} (through a symlink), which is not allowed",
                real.display()
            )))
        } else {
            Err(refused("not allowed".into()))
        }
    }

    /// Creates or refreshes the node object (registration and heartbeat).
    async fn heartbeat(&self) -> Result<(), crate::store::StoreError> {
        let key = Kind::Node.key("", &self.cfg.node);
        let unavailable = self.runtime.unavailable().await;
        let op = match self.ctx.cache.get(Kind::Node, &key).as_deref() {
            Some(Object::Node(n)) => {
                let mut n = n.clone();
                n.status = self.node_status(&unavailable);
                for (k, v) in &self.cfg.labels {
                    n.metadata
                        .labels
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                for t in &self.cfg.taints {
                    if !n
                        .spec
                        .taints
                        .iter()
                        .any(|x| x.key == t.key && x.effect == t.effect)
                    {
                        n.spec.taints.push(t.clone());
                    }
                }
                update_op(&Object::Node(n))
            }
            _ => match crate::store::get_object(&*self.ctx.store, Kind::Node, "", &self.cfg.node)
                .await?
            {
                Some(Object::Node(mut n)) => {
                    n.status = self.node_status(&unavailable);
                    update_op(&Object::Node(n))
                }
                _ => create_op(&Object::Node(Node {
                    metadata: Metadata {
                        name: self.cfg.node.clone(),
                        labels: self.cfg.labels.clone().into(),
                        uid: crate::model::object::new_uid(),
                        creation_timestamp: Some(Timestamp::now()),
                        generation: 1,
                        ..Metadata::default()
                    },
                    spec: NodeSpec {
                        taints: self.cfg.taints.clone(),
                        ..NodeSpec::default()
                    },
                    status: self.node_status(&unavailable),
                })),
            },
        };
        let rev = self.ctx.store.txn(vec![op]).await?;
        self.ctx.cache.wait_for(rev).await;
        Ok(())
    }

    /// Runs the agent until the engine is cancelled. Workloads keep running after it returns.
    pub async fn run(self: Arc<Self>) {
        let cancel = self.ctx.cancel.clone();
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
                            Ok(RuntimeEvent::Exited { id, status }) => {
                                if let Some(w) = me.lock().workloads.get_mut(&id) {
                                    w.state = WorkloadState::Exited(status);
                                }
                                me.queue.add(key_of_id(&id));
                            }
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
                tokio::spawn(crate::node::probes::run(
                    self.ctx.clone(),
                    self.runtime.clone(),
                    self.cfg.node.clone(),
                    Arc::new(move |id: &str| me.holds(id)),
                ))
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

    async fn refresh_workloads(&self) {
        if let Ok(list) = self.runtime.list().await {
            let mut g = self.lock();
            g.workloads = list.into_iter().map(|w| (w.id.clone(), w)).collect();
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

    async fn process(self: &Arc<Self>, keys: Vec<String>) {
        let outcomes: Vec<(String, Outcome)> = futures::stream::iter(keys)
            .map(|k| {
                let me = self.clone();
                async move {
                    let o = me.reconcile(&k).await;
                    (k, o)
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        let mut ops = Vec::new();
        let mut op_keys = Vec::new();
        for (k, o) in &outcomes {
            if let Some(d) = o.requeue_after {
                self.queue.add_after(k.clone(), d);
            }
            for op in &o.ops {
                op_keys.push(k.clone());
                ops.push(op.clone());
            }
        }
        if !ops.is_empty() {
            let mut last = None;
            let size = crate::store::MAX_TXN_OPS.min(self.ctx.store.max_txn_ops());
            let mut done = 0;
            let mut failed = None;
            for chunk in ops.chunks(size.max(1)) {
                match self.ctx.store.txn(chunk.to_vec()).await {
                    Ok(rev) => {
                        last = Some(rev);
                        done += chunk.len();
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let rest = ops.into_iter().zip(op_keys).skip(done);
            match failed {
                None => {}
                Some(
                    e @ (StoreError::Conflict { .. }
                    | StoreError::NotFound { .. }
                    | StoreError::AlreadyExists { .. }),
                ) => {
                    // One stale object fails its whole chunk: write the rest one by one and
                    // retry the losers.
                    tracing::debug!(error = %e, "agent: batched status write conflicted; writing one by one");
                    for (op, k) in rest {
                        match self.ctx.store.txn(vec![op]).await {
                            Ok(rev) => last = Some(rev),
                            Err(e) => {
                                tracing::debug!(replica = %k, error = %e, "agent: status write failed; retrying");
                                self.queue.retry(k);
                            }
                        }
                    }
                }
                Some(e) => {
                    // The store is unavailable (or refused the batch): retry every replica
                    // left with backoff instead of hammering it op by op.
                    tracing::debug!(error = %e, "agent: status write failed; retrying");
                    for (_, k) in rest {
                        self.queue.retry(k);
                    }
                }
            }
            if let Some(rev) = last {
                self.ctx.cache.wait_for(rev).await;
            }
        }
        for (k, _) in outcomes {
            self.queue.done(&k);
        }
    }

    /// Reconciles one replica from its stored version, or from the status the agent holds
    /// back for it, and writes the status it should have (or holds it back a moment more).
    async fn reconcile(self: &Arc<Self>, key: &str) -> Outcome {
        let id = id_of_key(key);
        let stored = self
            .ctx
            .cache
            .replica(key)
            .filter(|r| r.spec.node.as_deref() == Some(self.cfg.node.as_str()));
        let held = stored.as_ref().and_then(|r| {
            let g = self.lock();
            g.backoff
                .get(&id)
                .and_then(|b| b.held.as_ref())
                .filter(|(uid, _)| *uid == r.metadata.uid)
                .map(|(_, st)| st.clone())
        });
        let base = stored.clone().map(|mut r| {
            if let Some(st) = &held {
                r.status = st.clone();
            }
            r
        });
        let mut o = self.reconcile_replica(key, &id, base).await;
        let Some(r) = stored else {
            return o;
        };
        let want = o.status.take().or(held);
        let mut g = self.lock();
        let Some(b) = g.backoff.get_mut(&id) else {
            if let Some(st) = want {
                o.ops.extend(with_status(&r, st));
            }
            return o;
        };
        let Some(want) = want.filter(|st| *st != r.status && o.ops.is_empty()) else {
            b.held = None;
            return o;
        };
        let now = Instant::now();
        let hold = (b.failures >= CRASH_LOOP
            && r.spec.desired == DesiredState::Running
            && r.status.phase != Phase::Ready
            && want.phase != Phase::Ready)
            .then(|| {
                b.last_write
                    .map(|t| (t + STATUS_HOLD).saturating_duration_since(now))
            })
            .flatten()
            .filter(|left| !left.is_zero());
        match hold {
            Some(left) => {
                b.held = Some((r.metadata.uid.clone(), want));
                o.requeue_after = Some(o.requeue_after.map_or(left, |d| d.min(left)));
            }
            None => {
                b.held = None;
                b.last_write = Some(now);
                o.ops.extend(with_status(&r, want));
            }
        }
        o
    }

    /// Whether the agent holds a status for replica `id` that it has not written yet (the
    /// stored one is older: the prober leaves such a replica alone).
    fn holds(&self, id: &str) -> bool {
        self.lock()
            .backoff
            .get(id)
            .is_some_and(|b| b.held.is_some())
    }

    /// How much longer a run restarted after an exit waits before it counts as Ready (without
    /// a readiness probe), if it still waits.
    fn settle_left(&self, id: &str) -> Option<Duration> {
        let g = self.lock();
        let b = g.backoff.get(id).filter(|b| b.failures > 0)?;
        let settle = RESTART_SETTLE.min(self.cfg.stable_run);
        let left = (b.last_start? + settle).saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    async fn reconcile_replica(
        self: &Arc<Self>,
        key: &str,
        id: &str,
        replica: Option<Replica>,
    ) -> Outcome {
        let id = id.to_string();
        let workload = {
            let g = self.lock();
            if g.busy.contains(&id) {
                return Outcome::default();
            }
            g.workloads.get(&id).cloned()
        };
        match (replica, workload) {
            (None, None) => Outcome::default(),
            (None, Some(w)) => {
                tracing::info!(node = %self.cfg.node, workload = %id, "agent: stopping orphan");
                self.stop_in_background(&id, &w, None, key);
                Outcome::default()
            }
            (Some(r), w) if r.spec.desired == DesiredState::Stopped => {
                self.reconcile_stopped(key, &r, w).await
            }
            (Some(r), Some(w)) if w.replica_uid != r.metadata.uid => {
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
            {
                let mut g = me.lock();
                g.workloads.remove(&id);
                g.busy.remove(&id);
            }
            me.queue.add(key);
        });
    }

    async fn handle_exit(self: &Arc<Self>, r: &Replica, exit: ExitStatus) -> Outcome {
        let id = id_of(r);
        let t = &r.spec.template;
        let mut st = r.status.clone();
        st.last_exit = Some(ExitStatus {
            at: exit.at.or(Some(Timestamp::now())),
            ..exit.clone()
        });
        st.ports.clear();
        if !t.restart_policy.restarts(exit.success()) {
            st.phase = if exit.success() {
                Phase::Exited
            } else {
                Phase::Failed
            };
            st.reason = if exit.success() {
                "Completed".into()
            } else {
                "Error".into()
            };
            st.message = format!("exited: {exit}; restart policy {:?}", t.restart_policy);
            return Outcome {
                status: Some(st),
                ops: Vec::new(),
                requeue_after: None,
            };
        }
        let now = Instant::now();
        let (retry_at, start_error, failures, delay, next) = {
            let mut g = self.lock();
            let b = g.backoff.entry(id.clone()).or_default();
            let start_error = b.start_error.clone();
            let at = match b.retry_at {
                Some(at) => at,
                None => {
                    if b.last_start
                        .is_some_and(|s| now.duration_since(s) >= self.cfg.stable_run)
                    {
                        b.failures = 0;
                    }
                    let delay = restart_delay(
                        b.failures,
                        self.cfg.restart_backoff_base,
                        self.backoff_max(t),
                    );
                    b.failures += 1;
                    let at = now + delay;
                    b.retry_at = Some(at);
                    b.retry_delay = delay;
                    b.retry_wall = Some(Timestamp(Timestamp::now().0 + delay.as_millis() as u64));
                    at
                }
            };
            let next = b.retry_wall.unwrap_or_else(Timestamp::now);
            (at, start_error, b.failures, b.retry_delay, next)
        };
        if retry_at > now {
            let wait = retry_at - now;
            let wait_text = if delay < Duration::from_secs(1) {
                format!("{}ms", delay.as_millis().max(1))
            } else {
                humantime::format_duration(Duration::from_secs(delay.as_secs())).to_string()
            };
            st.phase = Phase::Failed;
            match start_error {
                Some((reason, error)) => {
                    st.reason = reason.into();
                    st.message = format!("back-off {wait_text} before trying again: {error}");
                }
                None if failures >= 3 => {
                    // Crashing again and again: say so, with the end of its output.
                    st.reason = "CrashLoopBackOff".into();
                    let tail = self.log_tail(&id).await;
                    st.message = format!(
                        "back-off {wait_text} restarting a replica that keeps crashing ({} restarts, next at {next}); last exit: {exit}{}",
                        st.restarts,
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!("; last output: {tail}")
                        }
                    );
                }
                None => {
                    st.reason = "BackOff".into();
                    st.message = format!(
                        "back-off {wait_text} restarting failed replica; last exit: {exit}"
                    );
                }
            }
            return Outcome {
                status: Some(st),
                ops: Vec::new(),
                requeue_after: Some(wait),
            };
        }
        let mut r2 = r.clone();
        r2.status = st;
        self.start(&r2, true).await
    }

    /// The restart backoff cap: the template's (clamped to the floor validation enforces,
    /// for templates stored without it), else the agent's.
    fn backoff_max(&self, t: &crate::model::object::Template) -> Duration {
        t.restart_backoff_cap()
            .unwrap_or(self.cfg.restart_backoff_max)
    }

    /// The last few lines a workload wrote (at most 3 lines, 300 characters).
    async fn log_tail(&self, id: &str) -> String {
        use futures::StreamExt;
        let read = async {
            let mut s = self
                .runtime
                .logs(
                    id,
                    crate::runtime::LogOptions {
                        follow: false,
                        tail_bytes: Some(1024),
                        tail_lines: None,
                    },
                )
                .await
                .ok()?;
            let mut all = Vec::new();
            while let Some(Ok(chunk)) = s.next().await {
                all.extend(chunk);
            }
            Some(all)
        };
        let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_millis(500), read).await else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        let n = tail.chars().count();
        tail.chars().skip(n.saturating_sub(300)).collect()
    }

    async fn start(self: &Arc<Self>, r: &Replica, restart: bool) -> Outcome {
        let id = id_of(r);
        let rec = self
            .ctx
            .recorder
            .with_source(&format!("agent/{}", self.cfg.node));
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        let mut st = r.status.clone();
        if !self.runtime.supports(&r.spec.template) {
            st.phase = Phase::Failed;
            st.reason = "Unsupported".into();
            st.message = format!("the {} runtime on node {} cannot run this template (image needs a container runtime; command needs the process runtime)", self.runtime.info().name, self.cfg.node);
            return Outcome {
                status: Some(st),
                ops: Vec::new(),
                requeue_after: None,
            };
        }
        let mut env = self.cfg.extra_env.clone();
        env.extend([
            EnvVar {
                name: "ORCH_SERVICE".into(),
                value: r.spec.service.to_string(),
                value_from: None,
            },
            EnvVar {
                name: "ORCH_NAMESPACE".into(),
                value: ns.into(),
                value_from: None,
            },
            EnvVar {
                name: "ORCH_REPLICA".into(),
                value: name.into(),
                value_from: None,
            },
            EnvVar {
                name: "ORCH_NODE".into(),
                value: self.cfg.node.clone(),
                value_from: None,
            },
        ]);
        let (template, mounts) = match self.resolve(r).await {
            Ok(x) => x,
            Err(why) => {
                return self
                    .start_failed(r, st, restart, RuntimeError::StartFailed(why), &rec)
                    .await
            }
        };
        let spec = WorkloadSpec {
            id: id.clone(),
            replica_uid: r.metadata.uid.clone(),
            service: r.spec.service.to_string(),
            namespace: ns.into(),
            template,
            mounts,
            template_hash: r.spec.template_hash.clone(),
            extra_env: env,
            dns: self.cfg.dns.map(|server| WorkloadDns {
                server,
                search: vec![
                    format!("{ns}.{}", self.cfg.dns_domain),
                    self.cfg.dns_domain.clone(),
                ],
            }),
        };
        {
            let mut g = self.lock();
            let b = g.backoff.entry(id.clone()).or_default();
            b.retry_at = None;
            b.last_start = Some(Instant::now());
            b.start_error = None;
        }
        match self.runtime.start(&spec).await {
            Ok(w) => {
                let settle = RESTART_SETTLE.min(self.cfg.stable_run);
                let settling = restart && !settle.is_zero();
                mark_running(&mut st, &w, &r.spec.template, settling);
                if restart {
                    st.restarts += 1;
                    let (failures, event) = {
                        let mut g = self.lock();
                        let b = g.backoff.entry(id.clone()).or_default();
                        let now = Instant::now();
                        let looping = b.failures >= CRASH_LOOP;
                        let event = !looping
                            || b.last_event
                                .is_none_or(|t| now.duration_since(t) >= CRASH_EVENT_EVERY);
                        if looping && event {
                            b.last_event = Some(now);
                        }
                        (b.failures, event)
                    };
                    let exit = st
                        .last_exit
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "unknown".into());
                    if failures >= CRASH_LOOP {
                        // Restarted at once, again and again: say so (not Ready meanwhile).
                        st.reason = "CrashLoopBackOff".into();
                        let tail = self.log_tail(&id).await;
                        st.message = format!(
                            "restarted a replica that keeps crashing ({} restarts); last exit: {exit}{}",
                            st.restarts,
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!("; last output: {tail}")
                            }
                        );
                    } else if settling && !crate::node::probes::gates_readiness(&r.spec.template) {
                        st.message = format!(
                            "restarted after it exited ({exit}); ready once it has stayed up {}",
                            humantime::format_duration(settle)
                        );
                    }
                    if event && failures >= CRASH_LOOP {
                        rec.warning(
                            Kind::Replica,
                            ns,
                            name,
                            "CrashLoopBackOff",
                            format!(
                                "restarted on {} ({}), restart {}: it keeps crashing; last exit: {exit}",
                                self.cfg.node, w.runtime_id, st.restarts
                            ),
                        );
                    } else if event {
                        rec.normal(
                            Kind::Replica,
                            ns,
                            name,
                            "Restarted",
                            format!(
                                "restarted on {} ({}), restart {}",
                                self.cfg.node, w.runtime_id, st.restarts
                            ),
                        );
                    }
                } else {
                    rec.normal(
                        Kind::Replica,
                        ns,
                        name,
                        "Started",
                        format!(
                            "started on {} ({}){}",
                            self.cfg.node,
                            w.runtime_id,
                            ports_note(&w.ports)
                        ),
                    );
                }
                self.lock().workloads.insert(id, w);
                Outcome {
                    status: Some(st),
                    ops: Vec::new(),
                    requeue_after: settling.then_some(settle),
                }
            }
            Err(e) => self.start_failed(r, st, restart, e, &rec).await,
        }
    }

    /// A start that failed (or whose secrets, configs or mounts could not be resolved):
    /// Failed with the reason, a warning event, and a retry by the restart policy's backoff.
    async fn start_failed(
        &self,
        r: &Replica,
        mut st: ReplicaStatus,
        restart: bool,
        e: RuntimeError,
        rec: &crate::engine::events::Recorder,
    ) -> Outcome {
        let id = id_of(r);
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        // Kubernetes' name for it, so users find it where they expect.
        let reason = if matches!(e, RuntimeError::ImagePull(_)) {
            "ErrImagePull"
        } else {
            "StartError"
        };
        rec.warning(Kind::Replica, ns, name, reason, e.to_string());
        if restart {
            st.restarts += 1;
        }
        st.phase = Phase::Failed;
        st.reason = reason.into();
        st.message = e.to_string();
        st.runtime_id.clear();
        st.last_exit = Some(ExitStatus {
            code: Some(127),
            at: Some(Timestamp::now()),
            ..ExitStatus::default()
        });
        // Retry by the restart policy's backoff.
        let delay = {
            let mut g = self.lock();
            let b = g.backoff.entry(id).or_default();
            b.start_error = Some((
                if reason == "ErrImagePull" {
                    "ImagePullBackOff"
                } else {
                    "StartBackOff"
                },
                e.to_string(),
            ));
            let d = restart_delay(
                b.failures.max(1),
                self.cfg.restart_backoff_base,
                self.backoff_max(&r.spec.template),
            );
            b.failures += 1;
            b.retry_at = Some(Instant::now() + d);
            b.retry_delay = d;
            b.retry_wall = Some(Timestamp(Timestamp::now().0 + d.as_millis() as u64));
            d
        };
        let requeue = r
            .spec
            .template
            .restart_policy
            .restarts(false)
            .then_some(delay);
        Outcome {
            status: Some(st),
            ops: Vec::new(),
            requeue_after: requeue,
        }
    }
}

/// The status of a replica whose workload runs: Ready, unless a readiness or startup probe
/// decides that (then Running until the prober says Ready; what it wrote for this run stays)
/// or it was restarted after an exit and is `settling` (Running until it has stayed up a
/// moment: a replica that crashes as soon as it starts is never Ready).
fn mark_running(
    st: &mut ReplicaStatus,
    w: &Workload,
    t: &crate::model::object::Template,
    settling: bool,
) {
    let same_run = st.runtime_id == w.runtime_id && st.phase.is_up();
    if !crate::node::probes::gates_readiness(t) {
        if !same_run {
            st.probes.clear();
        }
        if settling {
            st.phase = Phase::Running;
            if !same_run {
                st.reason = "Restarted".into();
                st.message = "restarted; ready once it has stayed up a moment".into();
            }
        } else {
            st.phase = Phase::Ready;
            st.reason.clear();
            st.message.clear();
        }
    } else if !same_run {
        st.phase = Phase::Running;
        st.reason = "Starting".into();
        st.message = "waiting for the first probe".into();
        st.probes.clear();
    }
    st.runtime_id = w.runtime_id.clone();
    st.host_ip = Some(w.host_ip.clone());
    st.ports = w.ports.clone();
    st.started_at = Some(w.started_at);
}

fn ports_note(ports: &[BoundPort]) -> String {
    if ports.is_empty() {
        String::new()
    } else {
        format!(
            ", ports {}",
            ports
                .iter()
                .map(|p| format!("{}={}", p.name, p.port))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_curve_is_immediate_then_doubles_to_the_cap() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(30));
        let got: Vec<u64> = (0..8).map(|n| restart_delay(n, b, m).as_secs()).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 8, 16, 30, 30]);
    }
}
