//! A fake [`Runtime`] that starts nothing: workloads "run" until told to crash or stop; and
//! a fake [`Network`] that sets nothing up: it hands out addresses of its lease in memory.
//! For unit tests of the engine here and in downstream crates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::model::object::{BoundPort, ExitStatus, NodeNetwork, PortSpec, Template};
use crate::model::quantity::Timestamp;
use crate::network::{Network, NetworkError, Peer};
use crate::runtime::{
    LogOptions, LogStream, ProbeAction, ProbeResult, Runtime, RuntimeError, RuntimeEvent,
    RuntimeInfo, Workload, WorkloadNetwork, WorkloadSpec, WorkloadState,
};

#[derive(Default)]
struct State {
    workloads: BTreeMap<String, Workload>,
    logs: BTreeMap<String, Vec<u8>>,
    fail_next_start: Option<String>,
    probes: BTreeMap<String, ProbeResult>,
    probe_counts: BTreeMap<String, u64>,
    /// The spec of each workload's last start.
    specs: BTreeMap<String, WorkloadSpec>,
}

/// An in-memory runtime. Cloning shares the state, so a test keeps a handle to inspect it.
#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<RuntimeEvent>,
    next_port: Arc<AtomicU16>,
    next_pid: Arc<AtomicU64>,
    starts: Arc<AtomicU64>,
    host_ip: String,
    containers: bool,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new("127.0.0.1")
    }
}

impl FakeRuntime {
    /// A fake runtime whose workloads report `host_ip`.
    pub fn new(host_ip: &str) -> FakeRuntime {
        FakeRuntime {
            state: Arc::default(),
            events: broadcast::channel(65_536).0,
            next_port: Arc::new(AtomicU16::new(20_000)),
            next_pid: Arc::new(AtomicU64::new(1000)),
            starts: Arc::default(),
            host_ip: host_ip.into(),
            containers: false,
        }
    }

    /// Also runs images as a container runtime would: it offers what containerd nodes
    /// offer, and their workloads join the network the agent makes
    /// ([`Runtime::joins_network`]).
    pub fn with_containers(mut self) -> FakeRuntime {
        self.containers = true;
        self
    }

    /// The spec workload `id` was last started with.
    pub fn spec_of(&self, id: &str) -> Option<WorkloadSpec> {
        self.lock().specs.get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a running workload exit with `code` (or be killed by `signal`).
    pub fn crash(&self, id: &str, code: Option<i32>, signal: Option<i32>) -> bool {
        let status = ExitStatus {
            code,
            signal,
            oom_killed: false,
            at: Some(Timestamp::now()),
        };
        let mut g = self.lock();
        match g.workloads.get_mut(id) {
            Some(w) if w.state == WorkloadState::Running => {
                w.state = WorkloadState::Exited(status.clone());
                drop(g);
                let _ = self.events.send(RuntimeEvent::Exited {
                    id: id.into(),
                    status,
                });
                true
            }
            _ => false,
        }
    }

    /// The next start of `id` fails with a permanent error carrying `message`.
    pub fn fail_next_start(&self, message: &str) {
        self.lock().fail_next_start = Some(message.into());
    }

    /// Ids of running workloads.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .workloads
            .values()
            .filter(|w| w.state == WorkloadState::Running)
            .map(|w| w.id.clone())
            .collect()
    }

    /// How many starts succeeded so far.
    pub fn start_count(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// From now on every probe check of workload `id` gives `result` (until set again; a
    /// workload never set passes its checks).
    pub fn set_probe_result(&self, id: &str, result: ProbeResult) {
        self.lock().probes.insert(id.into(), result);
    }

    /// How many probe checks of workload `id` ran so far.
    pub fn probe_count(&self, id: &str) -> u64 {
        self.lock().probe_counts.get(id).copied().unwrap_or(0)
    }

    /// Appends to a workload's log.
    pub fn write_log(&self, id: &str, bytes: &[u8]) {
        self.lock()
            .logs
            .entry(id.into())
            .or_default()
            .extend_from_slice(bytes);
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "fake".into(),
            limits_enforced: false,
            limits_note: "fake runtime: nothing is enforced".into(),
        }
    }

    /// Runs everything, and offers what nodes that run commands offer (as a process node).
    fn offers(&self) -> Vec<String> {
        let mut offers = vec![crate::runtime::OFFERS_COMMANDS.into()];
        if self.containers {
            offers.push(crate::runtime::OFFERS_IMAGES.into());
        }
        offers
    }

    fn supports(&self, _template: &Template) -> bool {
        true
    }

    fn joins_network(&self, template: &Template) -> bool {
        self.containers && template.image.is_some()
    }

    /// The result [set](FakeRuntime::set_probe_result) for the workload (pass if none), at once.
    async fn probe(&self, id: &str, _action: &ProbeAction, _timeout: Duration) -> ProbeResult {
        let mut g = self.lock();
        if !g
            .workloads
            .get(id)
            .is_some_and(|w| w.state == WorkloadState::Running)
        {
            return Err(RuntimeError::NotFound(id.into()).to_string());
        }
        *g.probe_counts.entry(id.into()).or_default() += 1;
        g.probes.get(id).cloned().unwrap_or(Ok(()))
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<Workload, RuntimeError> {
        let mut g = self.lock();
        if let Some(msg) = g.fail_next_start.take() {
            return Err(RuntimeError::StartFailed(msg));
        }
        if g.workloads
            .get(&spec.id)
            .is_some_and(|w| w.state == WorkloadState::Running)
        {
            return Err(RuntimeError::AlreadyRunning(spec.id.clone()));
        }
        let ports = spec
            .template
            .ports
            .iter()
            .map(|p| BoundPort {
                name: p.name.clone(),
                port: p
                    .port
                    .unwrap_or_else(|| self.next_port.fetch_add(1, Ordering::Relaxed)),
            })
            .collect();
        let w = Workload {
            id: spec.id.clone(),
            replica_uid: spec.replica_uid.clone(),
            template_hash: spec.template_hash.clone(),
            runtime_id: format!("fake-{}", self.next_pid.fetch_add(1, Ordering::Relaxed)),
            state: WorkloadState::Running,
            host_ip: self.host_ip.clone(),
            ip: spec.network.as_ref().map(|n| n.ip.clone()),
            ports,
            started_at: Timestamp::now(),
        };
        g.workloads.insert(spec.id.clone(), w.clone());
        g.specs.insert(spec.id.clone(), spec.clone());
        self.starts.fetch_add(1, Ordering::Relaxed);
        Ok(w)
    }

    async fn stop(
        &self,
        id: &str,
        signal: &str,
        _grace: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let mut g = self.lock();
        let w = g
            .workloads
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        match &w.state {
            WorkloadState::Exited(s) => Ok(s.clone()),
            WorkloadState::Running => {
                let s = ExitStatus {
                    code: None,
                    signal: crate::runtime::signal_number(signal),
                    oom_killed: false,
                    at: Some(Timestamp::now()),
                };
                w.state = WorkloadState::Exited(s.clone());
                Ok(s)
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        g.logs.remove(id);
        g.workloads
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(id.into()))
    }

    async fn list(&self) -> Result<Vec<Workload>, RuntimeError> {
        Ok(self.lock().workloads.values().cloned().collect())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        let g = self.lock();
        if !g.workloads.contains_key(id) {
            return Err(RuntimeError::NotFound(id.into()));
        }
        let mut bytes = g.logs.get(id).cloned().unwrap_or_default();
        let start = crate::runtime::log_start(bytes.len() as u64, &opts, |pos, len| {
            let from = (pos as usize).min(bytes.len());
            Ok(bytes[from..(from + len).min(bytes.len())].to_vec())
        })
        .unwrap_or(0);
        bytes.drain(..start as usize);
        Ok(futures::stream::iter([Ok(bytes)]).boxed())
    }
}

#[derive(Default)]
struct NetState {
    lease: Option<NodeNetwork>,
    configured: u64,
    fail_configure: Option<NetworkError>,
    fail_attach: Option<NetworkError>,
    attachments: BTreeMap<String, (WorkloadNetwork, Vec<PortSpec>)>,
    peers: Vec<Peer>,
    peer_updates: u64,
}

/// An in-memory [`Network`]: [`configure`](Network::configure) remembers the lease,
/// [`attach`](Network::attach) hands out the lowest free address of its subnet after the
/// gateway (`.2` of a `/24` first) with a made-up namespace path, and it remembers
/// attachments and peers. It can be told to fail. Cloning shares the state, so a test keeps
/// a handle to inspect it (and hands a clone to a restarted agent, as a real node keeps its
/// namespaces).
#[derive(Clone, Default)]
pub struct FakeNetwork {
    state: Arc<Mutex<NetState>>,
}

impl FakeNetwork {
    /// A network with nothing configured.
    pub fn new() -> FakeNetwork {
        FakeNetwork::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every [`configure`](Network::configure) from now on fails with `error` (`None`: they
    /// succeed again).
    pub fn fail_configure(&self, error: Option<NetworkError>) {
        self.lock().fail_configure = error;
    }

    /// The next [`attach`](Network::attach) of a new workload fails with `error`.
    pub fn fail_next_attach(&self, error: NetworkError) {
        self.lock().fail_attach = Some(error);
    }

    /// The lease it was last configured with.
    pub fn lease(&self) -> Option<NodeNetwork> {
        self.lock().lease.clone()
    }

    /// How many times `configure` succeeded.
    pub fn configured(&self) -> u64 {
        self.lock().configured
    }

    /// The attachments, by workload id.
    pub fn attachments(&self) -> BTreeMap<String, WorkloadNetwork> {
        self.lock()
            .attachments
            .iter()
            .map(|(id, (n, _))| (id.clone(), n.clone()))
            .collect()
    }

    /// The ports workload `id` was attached with.
    pub fn ports_of(&self, id: &str) -> Option<Vec<PortSpec>> {
        self.lock().attachments.get(id).map(|(_, p)| p.clone())
    }

    /// The peers last set.
    pub fn peers(&self) -> Vec<Peer> {
        self.lock().peers.clone()
    }

    /// How many times `set_peers` was called.
    pub fn peer_updates(&self) -> u64 {
        self.lock().peer_updates
    }

    /// Gives workload `id` an attachment at `ip` without going through the agent (a leftover
    /// of a crashed agent, say).
    pub fn insert_attachment(&self, id: &str, ip: &str) {
        self.lock().attachments.insert(
            id.into(),
            (
                WorkloadNetwork {
                    netns: format!("/run/netns/fake-{id}").into(),
                    ip: ip.into(),
                },
                Vec::new(),
            ),
        );
    }
}

#[async_trait]
impl Network for FakeNetwork {
    async fn configure(&self, lease: &NodeNetwork) -> Result<(), NetworkError> {
        let mut g = self.lock();
        if let Some(e) = g.fail_configure.clone() {
            return Err(e);
        }
        g.lease = Some(lease.clone());
        g.configured += 1;
        Ok(())
    }

    async fn attach(&self, id: &str, ports: &[PortSpec]) -> Result<WorkloadNetwork, NetworkError> {
        let mut g = self.lock();
        if let Some((n, _)) = g.attachments.get(id) {
            return Ok(n.clone());
        }
        if let Some(e) = g.fail_attach.take() {
            return Err(e);
        }
        let Some(lease) = &g.lease else {
            return Err(NetworkError::Failed("the network is not configured".into()));
        };
        let subnet: ipnet::Ipv4Net = lease
            .subnet
            .parse()
            .map_err(|e| NetworkError::Failed(format!("subnet {}: {e}", lease.subnet)))?;
        let used: std::collections::HashSet<String> =
            g.attachments.values().map(|(n, _)| n.ip.clone()).collect();
        let ip = subnet
            .hosts()
            .skip(1)
            .map(|a| a.to_string())
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                NetworkError::Exhausted(format!(
                    "no address left in subnet {}: it is full",
                    lease.subnet
                ))
            })?;
        let n = WorkloadNetwork {
            netns: format!("/run/netns/fake-{id}").into(),
            ip,
        };
        g.attachments.insert(id.into(), (n.clone(), ports.to_vec()));
        Ok(n)
    }

    async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        self.lock().attachments.remove(id);
        Ok(())
    }

    async fn attached(&self) -> Result<Vec<(String, WorkloadNetwork)>, NetworkError> {
        Ok(self.attachments().into_iter().collect())
    }

    async fn set_peers(&self, peers: &[Peer]) -> Result<(), NetworkError> {
        let mut g = self.lock();
        g.peers = peers.to_vec();
        g.peer_updates += 1;
        Ok(())
    }

    fn describe(&self) -> String {
        let g = self.lock();
        match &g.lease {
            Some(l) => format!(
                "fake {}, subnet {}, {} peers",
                l.mode.as_str(),
                l.subnet,
                g.peers.len()
            ),
            None => "fake, not configured".into(),
        }
    }
}
