//! The reconciliation engine: a shared [`cache::Cache`] over the [`Store`], and level-triggered
//! controllers that compare desired with observed state — replication, scheduling, endpoints,
//! node lifecycle — plus node agents that drive a [`Runtime`].
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
pub mod ctx;
pub mod endpoints;
pub mod events;
pub mod jobs;
pub mod metrics;
pub mod nodes;
pub mod queue;
pub mod replication;
pub mod rollout;
pub mod scheduling;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cache::Cache;
pub use ctx::{Ctx, EngineConfig};
pub use events::Recorder;

use crate::discovery::{Discovery, MemDiscovery};
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
        let ctx = Arc::new(Ctx {
            store,
            cache: cache.clone(),
            scheduler: self.scheduler,
            discovery: self.discovery,
            recorder,
            config: self.config,
            cancel: cancel.clone(),
            metrics,
        });
        let mut tasks = vec![tokio::spawn(cache.run(ctx.store.clone(), cancel.clone()))];
        if self.control_plane {
            tasks.push(tokio::spawn(replication::run(ctx.clone())));
            tasks.push(tokio::spawn(jobs::run(ctx.clone())));
            tasks.push(tokio::spawn(scheduling::run(ctx.clone())));
            tasks.push(tokio::spawn(nodes::run(ctx.clone())));
        }
        // Every engine publishes endpoints to its own discovery: on a node without the
        // control plane that is the node's DNS server, proxy and endpoint files.
        tasks.push(tokio::spawn(endpoints::run(ctx.clone())));
        Engine {
            ctx,
            tasks,
            agents: Vec::new(),
        }
    }
}

/// A running engine. Dropping it does not stop it; call [`Engine::shutdown`].
pub struct Engine {
    ctx: Arc<Ctx>,
    tasks: Vec<JoinHandle<()>>,
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

    /// Stops every controller and agent. Workloads keep running (a later engine re-adopts them).
    pub async fn shutdown(self) {
        self.ctx.cancel.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Let the event writer flush.
        tokio::time::sleep(self.ctx.config.event_flush).await;
    }
}
