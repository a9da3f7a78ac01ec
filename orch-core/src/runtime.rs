//! The `Runtime` trait: what a node agent needs from whatever runs workloads
//! (child processes, containerd containers, or the fake runtime in tests).

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::object::{BoundPort, EnvVar, ExitStatus, Template};
use crate::quantity::Timestamp;

/// Everything a runtime needs to start one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The workload id: the replica's `namespace.name`. Unique on the node.
    pub id: String,
    /// The replica's uid; recorded so a restarted agent can tell replicas apart.
    pub replica_uid: String,
    /// The owning service.
    pub service: String,
    /// The replica's namespace.
    pub namespace: String,
    /// What to run.
    pub template: Template,
    /// The template's hash, recorded with the workload.
    pub template_hash: String,
    /// Environment the agent adds (`ORCH_SERVICE`, `ORCH_REPLICA`, ...), before the template's.
    pub extra_env: Vec<EnvVar>,
}

/// Whether a workload runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadState {
    /// It runs.
    Running,
    /// It ended.
    Exited(ExitStatus),
}

/// A workload as the runtime knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The workload id (`namespace.name`).
    pub id: String,
    /// The replica uid it was started for.
    pub replica_uid: String,
    /// The template hash it was started with.
    pub template_hash: String,
    /// The runtime's own handle (`pid 1234`, a container id).
    pub runtime_id: String,
    /// Running or exited.
    pub state: WorkloadState,
    /// Address replicas are reached at.
    pub host_ip: String,
    /// Ports it was given.
    pub ports: Vec<BoundPort>,
    /// When it started.
    pub started_at: Timestamp,
}

/// Something that happened to a workload without being asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The workload ended.
    Exited {
        /// The workload id.
        id: String,
        /// How it ended.
        status: ExitStatus,
    },
}

/// Options for [`Runtime::logs`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming as the workload writes.
    pub follow: bool,
    /// Start this many bytes before the end (`None`: from the beginning of the kept logs).
    pub tail_bytes: Option<u64>,
}

/// Chunks of a workload's combined stdout and stderr.
pub type LogStream = BoxStream<'static, Result<Vec<u8>, RuntimeError>>;

/// What a runtime can enforce on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The runtime's name (`process`, `containerd`, `fake`).
    pub name: String,
    /// Whether CPU and memory limits are enforced.
    pub limits_enforced: bool,
    /// A human note on limits (why they are not enforced, or how they are).
    pub limits_note: String,
}

/// Errors from a runtime. [`RuntimeError::is_transient`] tells retry from give-up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No workload with that id.
    #[error("no workload {0}")]
    NotFound(String),
    /// The workload already runs.
    #[error("workload {0} is already running")]
    AlreadyRunning(String),
    /// This runtime cannot run the template (for example an image on the process runtime).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The workload could not be started and retrying the same spec will not help
    /// (command not found, permission denied).
    #[error("cannot start: {0}")]
    StartFailed(String),
    /// The runtime is not reachable right now.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl RuntimeError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RuntimeError::Unavailable(_) | RuntimeError::Io { .. })
    }
}

/// Runs workloads on one node.
///
/// A runtime remembers the workloads it started across restarts of its host process
/// (the basis of re-adoption): [`Runtime::list`] after a restart reports those still known.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Name, limits and capabilities.
    fn info(&self) -> RuntimeInfo;
    /// Whether this runtime can run `template`.
    fn supports(&self, template: &Template) -> bool;
    /// Starts a workload. An exited workload with the same id is replaced (its logs are kept).
    async fn start(&self, spec: &WorkloadSpec) -> Result<Workload, RuntimeError>;
    /// Sends `signal`, waits up to `grace`, then kills. Returns how it ended; the record stays
    /// until [`Runtime::remove`].
    async fn stop(
        &self,
        id: &str,
        signal: &str,
        grace: Duration,
    ) -> Result<ExitStatus, RuntimeError>;
    /// Forgets a stopped workload and frees everything it held (logs included).
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every workload the runtime knows, running or exited.
    async fn list(&self) -> Result<Vec<Workload>, RuntimeError>;
    /// Exits and other unrequested changes.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;
    /// The workload's logs.
    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError>;
}

/// Converts a signal name (`SIGTERM`, `TERM`, `15`) to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    if let Ok(v) = n.parse::<i32>() {
        return (1..=64).contains(&v).then_some(v);
    }
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        _ => return None,
    })
}
