//! A fake [`Runtime`] that starts nothing: workloads "run" until told to crash or stop.
//! For unit tests of the engine here and in downstream crates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::model::object::{BoundPort, ExitStatus, Template};
use crate::model::quantity::Timestamp;
use crate::runtime::{
    LogOptions, LogStream, ProbeAction, ProbeResult, Runtime, RuntimeError, RuntimeEvent,
    RuntimeInfo, Workload, WorkloadSpec, WorkloadState,
};

#[derive(Default)]
struct State {
    workloads: BTreeMap<String, Workload>,
    logs: BTreeMap<String, Vec<u8>>,
    fail_next_start: Option<String>,
    probes: BTreeMap<String, ProbeResult>,
    probe_counts: BTreeMap<String, u64>,
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
        }
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
        vec![crate::runtime::OFFERS_COMMANDS.into()]
    }

    fn supports(&self, _template: &Template) -> bool {
        true
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
