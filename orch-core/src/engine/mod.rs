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
pub use events::Recorder;

use crate::discovery::{Discovery, MemDiscovery};
use crate::node::{Agent, AgentConfig};
use crate::runtime::Runtime;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// Tunables of the control plane.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Every controller reconciles everything this often, whatever it heard.
    pub resync: Duration,
    /// First retry delay after a failed reconcile (doubles per failure).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Concurrent reconciles of the replication controller.
    pub workers: usize,
    /// How often node heartbeats are checked.
    pub node_check: Duration,
    /// Silence after which a node is Unreachable.
    pub node_grace: Duration,
    /// Silence after which a node's replicas are Lost and replaced.
    pub node_lost_timeout: Duration,
    /// Most events kept in the store.
    pub event_limit: usize,
    /// How long events are gathered before one batched write.
    pub event_flush: Duration,
    /// Seed for the scheduler's tie-breaks.
    pub seed: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            resync: Duration::from_secs(30),
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(30),
            workers: 4,
            node_check: Duration::from_millis(500),
            node_grace: Duration::from_secs(3),
            node_lost_timeout: Duration::from_secs(10),
            event_limit: 2_000,
            event_flush: Duration::from_millis(50),
            seed: 0x6f72_6368,
        }
    }
}

/// What every controller and agent shares.
pub struct Ctx {
    /// The store (the truth).
    pub store: Arc<dyn Store>,
    /// The cache (a reflection of the store).
    pub cache: Arc<Cache>,
    /// Places replicas.
    pub scheduler: Arc<dyn Scheduler>,
    /// Receives endpoints.
    pub discovery: Arc<dyn Discovery>,
    /// Records events.
    pub recorder: Recorder,
    /// Tunables.
    pub config: EngineConfig,
    /// Fires on shutdown.
    pub cancel: CancellationToken,
    /// Counters and latencies (`/metrics`).
    pub metrics: Arc<crate::engine::metrics::Metrics>,
}

impl Ctx {
    /// The metrics in the Prometheus text format: the engine's counters and latencies, and
    /// gauges read from the cache now (replicas by phase, nodes by condition, services,
    /// whether the store is reachable).
    pub fn render_metrics(&self) -> String {
        use std::collections::BTreeMap;
        let cache = &self.cache;
        let mut phases: BTreeMap<String, f64> = BTreeMap::new();
        // Shared handles, not copies: this runs on every scrape.
        for o in cache.list(crate::model::object::Kind::Replica) {
            if let crate::model::object::Object::Replica(r) = o.as_ref() {
                *phases.entry(format!("{:?}", r.status.phase)).or_default() += 1.0;
            }
        }
        let mut conditions: BTreeMap<String, f64> = BTreeMap::new();
        for n in cache.nodes() {
            *conditions
                .entry(format!("{:?}", n.status.condition))
                .or_default() += 1.0;
        }
        let labelled = |key: &str, m: BTreeMap<String, f64>| -> Vec<(String, f64)> {
            m.into_iter()
                .map(|(k, v)| (format!("{key}=\"{k}\""), v))
                .collect()
        };
        self.metrics.render(&[
            (
                "orch_replicas",
                "Replicas by phase.",
                labelled("phase", phases),
            ),
            (
                "orch_nodes",
                "Nodes by condition.",
                labelled("condition", conditions),
            ),
            (
                "orch_services",
                "Services.",
                vec![(String::new(), cache.services().len() as f64)],
            ),
            (
                "orch_store_reachable",
                "1 while the engine's view of the store is current.",
                vec![(
                    String::new(),
                    if cache.live_since().is_some() {
                        1.0
                    } else {
                        0.0
                    },
                )],
            ),
        ])
    }

    /// Whether the engine is ready to serve: its cache has listed the store and the store is
    /// reachable now; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.cache.synced() {
            return Err("the cache has not listed the store yet".into());
        }
        if self.cache.live_since().is_none() {
            return Err("the store is unreachable".into());
        }
        Ok(())
    }
}

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
        let metrics = Arc::new(crate::engine::metrics::Metrics::default());
        let store: Arc<dyn Store> = Arc::new(crate::engine::metrics::TimedStore::new(
            self.store,
            metrics.clone(),
        ));
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
