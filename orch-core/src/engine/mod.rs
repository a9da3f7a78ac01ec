//! The reconciliation engine: a shared [`cache::Cache`] over the [`Store`], and level-triggered
//! controllers that compare desired with observed state — replication, scheduling, endpoints,
//! node lifecycle — plus node agents that drive a [`Runtime`].
//!
//! Every per-key controller (replication, jobs, endpoints) runs on one runtime, `controller`:
//! a `reconcile(key, ctx) -> Result<Action, E>` plus an error policy, with the queue, backoff,
//! metrics and resync in one runner. `ControllerSet` (here) is the one place that starts and
//! stops controllers. Without an elector the engine leads from the start
//! ([`Engine::start_control_plane`] and [`Engine::stop_control_plane`] switch by hand); with
//! one ([`EngineBuilder::elector`]) the leadership loop (`leadership`) starts the control
//! plane for each term won, over a store fenced on the term, and stops it when the term is
//! lost.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use orch_core::{Engine, AgentConfig};
//! # struct S; impl orch_core::Scheduler for S { fn name(&self) -> &str { "s" }
//! #   fn schedule(&self, _: &orch_core::scheduler::ClusterSnapshot, _: &[orch_core::scheduler::PendingReplica], _: u64) -> orch_core::scheduler::Plan { Default::default() } }
//! let mut engine = Engine::builder(Arc::new(orch_core::memstore::MemStore::new()), Arc::new(S)).start();
//! engine.add_agent(Arc::new(orch_core::fake::FakeRuntime::default()), AgentConfig::new("node-1"));
//! # }
//! ```

pub mod api;
pub mod cache;
pub(crate) mod controller;
pub(crate) mod cronjobs;
pub(crate) mod ctx;
pub(crate) mod depends;
pub(crate) mod endpoints;
pub(crate) mod events;
pub(crate) mod jobs;
pub(crate) mod leadership;
pub(crate) mod metrics;
pub(crate) mod network;
pub mod nodes;
pub(crate) mod queue;
pub mod replication;
pub(crate) mod rollout;
pub(crate) mod routes;
pub(crate) mod scheduling;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cache::Cache;
pub use ctx::{ClusterNetwork, Ctx, EngineConfig};

use crate::discovery::{Discovery, MemDiscovery};
use crate::leader::{Elector, Leadership};
use crate::node::{Agent, AgentConfig};
use crate::runtime::Runtime;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// Assembles an [`Engine`].
pub struct EngineBuilder {
    store: Arc<dyn Store>,
    scheduler: Arc<dyn Scheduler>,
    discovery: Arc<dyn Discovery>,
    config: EngineConfig,
    control_plane: bool,
    elector: Option<Arc<dyn Elector>>,
}

impl EngineBuilder {
    /// Publishes endpoints to `discovery` (default: in memory).
    pub fn discovery(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discovery = discovery;
        self
    }
    /// Overrides the tunables.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }
    /// Runs only the cache and the endpoints controller (which publishes to this process's
    /// discovery), not the control plane: for processes that host agents only.
    pub fn agents_only(mut self) -> Self {
        self.control_plane = false;
        self
    }
    /// Runs the control plane only while `elector` makes this engine the leader: the engine
    /// campaigns; once elected (and its cache has caught up with the term's revision) it
    /// starts the control plane over a store fenced on the term ([`crate::leader::Fenced`]);
    /// when [`Elector::lost`] resolves it stops it and campaigns again. [`Engine::shutdown`]
    /// resigns. The cache, the endpoints controller and the agents run whether it leads or
    /// not. Ignored with [`EngineBuilder::agents_only`].
    pub fn elector(mut self, elector: Arc<dyn Elector>) -> Self {
        self.elector = Some(elector);
        self
    }
    /// Starts the cache and the controllers on the current tokio runtime.
    pub fn start(self) -> Engine {
        let cancel = CancellationToken::new();
        let cache = Cache::new();
        let recorder = events::spawn_writer(
            self.store.clone(),
            self.config.event_limit,
            self.config.event_flush,
            cancel.clone(),
        );
        let metrics = Arc::new(metrics::Metrics::default());
        let store: Arc<dyn Store> = Arc::new(metrics::TimedStore::new(self.store, metrics.clone()));
        let elector = self.elector.filter(|_| self.control_plane);
        let leads_now = self.control_plane && elector.is_none();
        let ctx = Arc::new(Ctx {
            store,
            cache: cache.clone(),
            scheduler: self.scheduler,
            discovery: self.discovery,
            recorder,
            config: self.config,
            cancel: cancel.clone(),
            metrics,
            leadership: Arc::new(tokio::sync::watch::channel(Leadership::default()).0),
            control_plane: false,
            term: None,
        });
        let tasks = vec![tokio::spawn(cache.run(ctx.store.clone(), cancel.clone()))];
        let control_plane = leads_now.then(|| {
            leadership::started(&ctx, None);
            ControllerSet::control_plane(&ctx.for_control_plane(None))
        });
        let leadership = elector.map(|elector| tokio::spawn(leadership::run(ctx.clone(), elector)));
        // Every engine publishes endpoints to its own discovery: on a node without the
        // control plane that is the node's DNS server, proxy and endpoint files.
        let node_local = ControllerSet::node_local(&ctx);
        Engine {
            ctx,
            tasks,
            control_plane,
            leadership,
            node_local,
            agents: Vec::new(),
        }
    }
}

/// Controllers started together and stopped together by one [`CancellationToken`] (a child
/// of the engine's, so shutting the engine down stops them too).
pub(crate) struct ControllerSet {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ControllerSet {
    /// Starts the control plane: replication, jobs, cron jobs, route status, scheduling and
    /// node lifecycle, and the network controller when the cluster has a network.
    pub(crate) fn control_plane(ctx: &Arc<Ctx>) -> ControllerSet {
        let cancel = ctx.cancel.child_token();
        let mut tasks = vec![
            tokio::spawn(controller::run(
                Arc::new(replication::Replication::default()),
                ctx.clone(),
                ctx.config.workers,
                cancel.clone(),
            )),
            tokio::spawn(controller::run(
                Arc::new(jobs::Jobs::default()),
                ctx.clone(),
                1,
                cancel.clone(),
            )),
            tokio::spawn(controller::run(
                Arc::new(cronjobs::CronJobs),
                ctx.clone(),
                1,
                cancel.clone(),
            )),
            tokio::spawn(controller::run(
                Arc::new(routes::RouteStatusController::default()),
                ctx.clone(),
                1,
                cancel.clone(),
            )),
            tokio::spawn(scheduling::run(ctx.clone(), cancel.clone())),
            tokio::spawn(nodes::run(ctx.clone(), cancel.clone())),
        ];
        if ctx.config.network.is_some() {
            tasks.push(tokio::spawn(controller::run(
                Arc::new(network::NetworkController::default()),
                ctx.clone(),
                ctx.config.workers,
                cancel.clone(),
            )));
        }
        ControllerSet { cancel, tasks }
    }

    /// Starts what every engine runs, control plane or not: the endpoints controller, which
    /// publishes to this process's discovery (on a node: its DNS server, proxy and endpoint
    /// files).
    pub(crate) fn node_local(ctx: &Arc<Ctx>) -> ControllerSet {
        let cancel = ctx.cancel.child_token();
        let endpoints = Arc::new(endpoints::Endpoints::default());
        let tasks = vec![tokio::spawn(controller::run(
            endpoints,
            ctx.clone(),
            1,
            cancel.clone(),
        ))];
        ControllerSet { cancel, tasks }
    }

    /// Stops every controller of the set and waits (up to `grace` each) for them to end.
    pub(crate) async fn stop(self, grace: Duration) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(grace, t).await;
        }
    }

    /// Stops every controller of the set, waits at most `grace` in all for them to end, and
    /// aborts those still running then (one stuck in a store call: fencing keeps whatever it
    /// sends from landing). A leader stepping down must not wait past its lease.
    pub(crate) async fn step_down(self, grace: Duration) {
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
    }
}

/// A running engine. Dropping it does not stop it; call [`Engine::shutdown`].
pub struct Engine {
    ctx: Arc<Ctx>,
    /// The cache and the agents.
    tasks: Vec<JoinHandle<()>>,
    /// Replication, jobs, scheduling, node lifecycle: while this engine leads (without an
    /// elector).
    control_plane: Option<ControllerSet>,
    /// With an elector: the leadership loop, which runs the control plane while it leads.
    leadership: Option<JoinHandle<()>>,
    /// The endpoints controller: always.
    node_local: ControllerSet,
    agents: Vec<Arc<Agent>>,
}

impl Engine {
    /// The metrics in the Prometheus text format (see [`Ctx::render_metrics`]).
    pub fn render_metrics(&self) -> String {
        self.ctx.render_metrics()
    }

    /// Whether the engine is ready to serve (see [`Ctx::readiness`]).
    pub fn readiness(&self) -> Result<(), String> {
        self.ctx.readiness()
    }

    /// Starts assembling an engine over `store` with `scheduler`.
    pub fn builder(store: Arc<dyn Store>, scheduler: Arc<dyn Scheduler>) -> EngineBuilder {
        EngineBuilder {
            store,
            scheduler,
            discovery: Arc::new(MemDiscovery::default()),
            config: EngineConfig::default(),
            control_plane: true,
            elector: None,
        }
    }

    /// Adds a node agent driving `runtime` and starts it.
    pub fn add_agent(&mut self, runtime: Arc<dyn Runtime>, config: AgentConfig) -> Arc<Agent> {
        let agent = Agent::new(self.ctx.clone(), runtime, config);
        self.tasks.push(tokio::spawn(agent.clone().run()));
        self.agents.push(agent.clone());
        agent
    }

    /// The agents started with [`Engine::add_agent`].
    pub fn agents(&self) -> &[Arc<Agent>] {
        &self.agents
    }

    /// The shared context (store, cache, recorder).
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// The cache, for queries.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.ctx.cache
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.ctx.store
    }

    /// What this engine knows of leadership (see [`Ctx::leadership`]).
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.ctx.leadership()
    }

    /// Starts the control-plane controllers (replication, jobs, scheduling, node lifecycle)
    /// unless they run already: the manual switch for an engine without an elector (one
    /// built with [`EngineBuilder::elector`] starts and stops them on leadership, and this
    /// does nothing).
    pub fn start_control_plane(&mut self) {
        if self.leadership.is_some() {
            tracing::warn!("start_control_plane: this engine has an elector, which decides");
            return;
        }
        if self.control_plane.is_none() {
            leadership::started(&self.ctx, None);
            self.control_plane = Some(ControllerSet::control_plane(
                &self.ctx.for_control_plane(None),
            ));
        }
    }

    /// Stops the control-plane controllers and waits for them to end; the cache, the
    /// endpoints controller and the agents keep running. Does nothing on an engine with an
    /// elector.
    pub async fn stop_control_plane(&mut self) {
        if let Some(set) = self.control_plane.take() {
            set.stop(Duration::from_secs(5)).await;
            leadership::stopped(&self.ctx);
        }
    }

    /// Stops every controller and agent; with an elector, stops the control plane if it
    /// leads and resigns. Workloads keep running (a later engine re-adopts them).
    pub async fn shutdown(self) {
        self.ctx.cancel.cancel();
        if let Some(task) = self.leadership {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        if let Some(set) = self.control_plane {
            set.stop(Duration::from_secs(5)).await;
            leadership::stopped(&self.ctx);
        }
        self.node_local.stop(Duration::from_secs(5)).await;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Let the event writer flush.
        tokio::time::sleep(self.ctx.config.event_flush).await;
    }
}
