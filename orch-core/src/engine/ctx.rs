//! What every controller and agent shares: the [`Ctx`] (store, cache, scheduler, discovery,
//! recorder, tunables, metrics, cancellation) and the engine's tunables ([`EngineConfig`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::discovery::Discovery;
use crate::engine::cache::Cache;
use crate::engine::events::Recorder;
use crate::leader::{Fenced, Leadership, Term};
use crate::scheduler::Scheduler;
use crate::store::{Revision, Store};

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
    /// The cluster's replica network, if it has one: the network controller leases node
    /// subnets and service virtual IPs from it.
    pub network: Option<ClusterNetwork>,
}

/// A cluster's replica network (`orchd manager --cluster-cidr --service-cidr --network-mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetwork {
    /// Where node subnets come from (default `10.244.0.0/16`).
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The prefix length of each node's subnet (default 24).
    pub node_prefix: u8,
    /// Where service virtual IPs come from (default `10.96.0.0/16`).
    pub service_cidr: ipnet::Ipv4Net,
    /// VXLAN or host-gw.
    pub mode: crate::model::object::NetworkMode,
}

impl ClusterNetwork {
    /// Checks the ranges: the node prefix fits inside the cluster CIDR and leaves room for
    /// addresses, the two CIDRs do not overlap. The error names the values and what is
    /// allowed.
    pub fn validate(&self) -> Result<(), String> {
        let c = self.cluster_cidr;
        let s = self.service_cidr;
        if self.node_prefix < c.prefix_len() || self.node_prefix > 28 {
            return Err(format!(
                "node subnet size /{} does not fit cluster CIDR {c}: use a prefix from /{} to /28",
                self.node_prefix,
                c.prefix_len()
            ));
        }
        if c.contains(&s.network()) || s.contains(&c.network()) {
            return Err(format!(
                "cluster CIDR {c} and service CIDR {s} overlap: they must be disjoint"
            ));
        }
        if s.prefix_len() > 30 {
            return Err(format!(
                "service CIDR {s} is too small: use a prefix of /30 or shorter"
            ));
        }
        Ok(())
    }
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        ClusterNetwork {
            cluster_cidr: "10.244.0.0/16".parse().expect("a valid CIDR"),
            node_prefix: 24,
            service_cidr: "10.96.0.0/16".parse().expect("a valid CIDR"),
            mode: crate::model::object::NetworkMode::Vxlan,
        }
    }
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
            network: None,
        }
    }
}

/// What every controller and agent shares.
pub struct Ctx {
    /// The store (the truth).
    pub(crate) store: Arc<dyn Store>,
    /// The cache (a reflection of the store).
    pub(crate) cache: Arc<Cache>,
    /// Places replicas.
    pub(crate) scheduler: Arc<dyn Scheduler>,
    /// Receives endpoints.
    pub(crate) discovery: Arc<dyn Discovery>,
    /// Records events.
    pub(crate) recorder: Recorder,
    /// Tunables.
    pub(crate) config: EngineConfig,
    /// Fires on shutdown.
    pub(crate) cancel: CancellationToken,
    /// Counters and latencies (`/metrics`).
    pub(crate) metrics: Arc<crate::engine::metrics::Metrics>,
    /// What this engine knows of leadership (shared by the engine's context and each term's).
    pub(crate) leadership: Arc<tokio::sync::watch::Sender<Leadership>>,
    /// Whether this is a control plane's context (its reconciles count for
    /// [`Leadership::first_reconcile`]).
    pub(crate) control_plane: bool,
    /// The create revision of the term this control plane belongs to (`None` without an
    /// elector).
    pub(crate) term: Option<Revision>,
}

impl Ctx {
    /// What this engine knows of leadership: whether it leads, who does, its term, and when
    /// its control plane started and first reconciled. Without an elector the engine leads
    /// while its control plane runs.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// The context of a control plane: the same cache, scheduler, discovery, recorder,
    /// metrics and leadership; with a `term`, over a store whose writes are fenced on it.
    pub(crate) fn for_control_plane(&self, term: Option<&Term>) -> Arc<Ctx> {
        let store: Arc<dyn Store> = match term {
            Some(term) => Arc::new(Fenced::new(self.store.clone(), term.clone())),
            None => self.store.clone(),
        };
        Arc::new(Ctx {
            store,
            cache: self.cache.clone(),
            scheduler: self.scheduler.clone(),
            discovery: self.discovery.clone(),
            recorder: self.recorder.clone(),
            config: self.config.clone(),
            cancel: self.cancel.clone(),
            metrics: self.metrics.clone(),
            leadership: self.leadership.clone(),
            control_plane: true,
            term: term.map(|t| t.created),
        })
    }

    /// A reconcile of this context's control plane finished: the first of its term sets
    /// [`Leadership::first_reconcile`].
    pub(crate) fn reconciled(&self) {
        if !self.control_plane || self.leadership.borrow().first_reconcile.is_some() {
            return;
        }
        self.leadership.send_if_modified(|l| {
            let ours = l.term.as_ref().map(|t| t.created) == self.term;
            if l.leading && ours && l.first_reconcile.is_none() {
                l.first_reconcile = Some(std::time::SystemTime::now());
                true
            } else {
                false
            }
        });
    }

    /// The metrics in the Prometheus text format: the engine's counters and latencies,
    /// gauges read from the cache now (replicas by phase, nodes by condition, services,
    /// whether the store is reachable) and leadership (`orch_leader`,
    /// `orch_leader_changes_total`, `orch_leader_since_seconds`,
    /// `orch_leader_first_reconcile_seconds`, `orch_leader_term`).
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
        let mut out = self.metrics.render(&[
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
        ]);
        crate::engine::metrics::render_leadership(&mut out, &self.leadership.borrow());
        out
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
