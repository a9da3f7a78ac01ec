//! The `Runtime` trait: what a node agent needs from whatever runs workloads
//! (child processes, containerd containers, or the fake runtime in tests).

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::model::object::{BoundPort, EnvVar, ExitStatus, Template};
use crate::model::quantity::Timestamp;

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
    /// The cluster DNS server the workload should use, if the node runs one.
    pub dns: Option<WorkloadDns>,
    /// What to mount, resolved by the agent (secret and config contents, volume directories).
    pub mounts: Vec<WorkloadMount>,
    /// The network namespace the agent made for it ([`crate::Network::attach`]); `None`: the
    /// node's own network. Only given to a runtime whose [`Runtime::joins_network`] says yes.
    pub network: Option<WorkloadNetwork>,
}

/// A workload's own network: a namespace set up by the node's [`crate::Network`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadNetwork {
    /// The network namespace to join (a bind-mounted nsfs file).
    pub netns: std::path::PathBuf,
    /// Its address in that namespace.
    pub ip: String,
}

/// One mount of a workload, as the runtime makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadMount {
    /// Where it appears (absolute; for processes, under the replica's own directory).
    pub path: String,
    /// Read-only.
    pub read_only: bool,
    /// What it is.
    pub source: MountSource,
}

/// Where a mount's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSource {
    /// Files written by the runtime on tmpfs: a secret's (mode 0400) or a config's (0444).
    Files(MountFiles),
    /// A directory of the node (a named volume's, or an allowed host path).
    Dir(std::path::PathBuf),
    /// An empty tmpfs directory for the workload's life.
    Tmpfs,
}

/// The files of a secret or config mount. Its `Debug` shows names and sizes, never contents.
#[derive(Clone, PartialEq, Eq)]
pub struct MountFiles {
    /// A secret's (0400) rather than a config's (0444).
    pub secret: bool,
    /// File name (a key) and contents.
    pub files: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for MountFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(n, c)| format!("{n} ({} bytes)", c.len()))
            .collect();
        f.debug_struct("MountFiles")
            .field("secret", &self.secret)
            .field("files", &names)
            .finish()
    }
}

/// Name resolution for a workload: processes get it as `ORCH_DNS` and `ORCH_DNS_SEARCH` in
/// their environment (they share the host's `/etc/resolv.conf`, which glibc alone reads for
/// its nameservers, so the server must be asked by name); containers get an
/// `/etc/resolv.conf` naming the server first, then the host's own nameservers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadDns {
    /// The server (on port 53 for a resolv.conf to reach it).
    pub server: std::net::SocketAddr,
    /// Search domains, most specific first (`NAMESPACE.orch.local orch.local
    /// NAMESPACE.svc.cluster.local svc.cluster.local`).
    pub search: Vec<String>,
}

impl WorkloadDns {
    /// The environment variables processes get.
    pub fn env(&self) -> Vec<(String, String)> {
        let search = self.search.join(" ");
        // No LOCALDOMAIN: it changes glibc's search list but not its nameservers, so every
        // short name would first be asked of the host's resolvers as NAME.NAMESPACE.orch.local.
        vec![
            ("ORCH_DNS".into(), self.server.to_string()),
            ("ORCH_DNS_SEARCH".into(), search),
        ]
    }

    /// A resolv.conf: this server first, then the nameservers of `host_resolv_conf` (the
    /// host's file), so names outside the cluster still resolve when the server refuses
    /// them. A server not on port 53 cannot be named in resolv.conf; it is left out.
    pub fn resolv_conf(&self, host_resolv_conf: &str) -> String {
        let mut out = String::from("# written by orch\n");
        if self.server.port() == 53 {
            out.push_str(&format!("nameserver {}\n", self.server.ip()));
        }
        for line in host_resolv_conf.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("nameserver") {
                if let Some(ip) = words.next() {
                    if ip != self.server.ip().to_string() {
                        out.push_str(&format!("nameserver {ip}\n"));
                    }
                }
            }
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        out.push_str("options ndots:5 timeout:2 attempts:2\n");
        out
    }
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
    /// The address of the node it runs on.
    pub host_ip: String,
    /// Its own address, when it was started with a [`WorkloadNetwork`].
    pub ip: Option<String>,
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

/// Options for [`Runtime::logs`]. Without a tail, the stream starts at the beginning of the
/// kept logs; with both tails, at the later of the two starts ([`log_start`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming as the workload writes.
    pub follow: bool,
    /// At most the last this many bytes, from the first line that starts within them (a line
    /// longer than that is shown from its cut: nothing else would fit).
    pub tail_bytes: Option<u64>,
    /// The last this many lines (a last line without its line break counts as one).
    pub tail_lines: Option<u64>,
}

/// Where the logs `opts` asks for start, in kept output of `total` bytes that `read(pos, len)`
/// returns pieces of (up to `len` bytes from `pos`; fewer only at the end). Reads only near the
/// start it finds: blocks backwards from the end for `tail_lines`, forwards from the byte cut
/// for `tail_bytes`.
pub fn log_start(
    total: u64,
    opts: &LogOptions,
    read: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<u64> {
    log_start_in_blocks(total, opts, read, 64 * 1024)
}

fn log_start_in_blocks(
    total: u64,
    opts: &LogOptions,
    mut read: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    block_len: u64,
) -> std::io::Result<u64> {
    let mut start = 0;
    if let Some(t) = opts.tail_bytes {
        let cut = total.saturating_sub(t);
        start = cut;
        if cut > 0 {
            // The first line break at or after the byte before the cut.
            let mut pos = cut - 1;
            'scan: while pos < total {
                let block = read(pos, block_len.min(total - pos) as usize)?;
                if block.is_empty() {
                    break;
                }
                for (i, b) in block.iter().enumerate() {
                    if *b == b'\n' {
                        let next = pos + i as u64 + 1;
                        if next < total {
                            start = next;
                        }
                        break 'scan;
                    }
                }
                pos += block.len() as u64;
            }
        }
    }
    if let Some(n) = opts.tail_lines {
        let mut line_start = 0;
        if n == 0 {
            line_start = total;
        } else if total > 0 {
            // Backwards from before a final line break, to the n-th line break.
            let mut end = total;
            if read(total - 1, 1)?.first() == Some(&b'\n') {
                end -= 1;
            }
            let mut seen = 0;
            'back: while end > 0 {
                let from = end.saturating_sub(block_len);
                let block = read(from, (end - from) as usize)?;
                for (i, b) in block.iter().enumerate().rev() {
                    if *b == b'\n' {
                        seen += 1;
                        if seen == n {
                            line_start = from + i as u64 + 1;
                            break 'back;
                        }
                    }
                }
                end = from;
            }
        }
        start = start.max(line_start);
    }
    Ok(start)
}

/// What a command run inside a workload ([`Runtime::exec`]) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it (SIGKILL when it ran past its timeout).
    pub signal: Option<i32>,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
    /// Its standard output (at most [`EXEC_OUTPUT_MAX`] bytes).
    pub stdout: Vec<u8>,
    /// Its standard error (at most [`EXEC_OUTPUT_MAX`] bytes).
    pub stderr: Vec<u8>,
}

/// The most output of each stream [`Runtime::exec`] returns.
pub const EXEC_OUTPUT_MAX: usize = 1 << 20;

/// One check of a probe against a workload, resolved by the agent: the address to reach (the
/// replica's host address and host port, a named port already looked up) or the command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET http://HOST:PORT/PATH` (with `Host: HOST:PORT`): passes on a status from 200 to 399.
    HttpGet {
        /// The address to connect to.
        host: String,
        /// The port.
        port: u16,
        /// The request path (starts with `/`).
        path: String,
    },
    /// A TCP connection to `HOST:PORT`: passes once it is accepted.
    TcpConnect {
        /// The address to connect to.
        host: String,
        /// The port.
        port: u16,
    },
    /// A command run inside the workload ([`Runtime::exec`]): passes when it exits 0.
    Exec {
        /// The program and its arguments.
        command: Vec<String>,
    },
}

/// What one probe check found ([`Runtime::probe`]): `Ok` passes; `Err` says why not, in the
/// words the replica's status and events show (`HTTP 503 from GET http://127.0.0.1:8080/healthz`,
/// `connect 127.0.0.1:1: Connection refused (os error 111)`, `exec ["true"]: exit 1`,
/// `GET ...: no answer within 1s`).
pub type ProbeResult = Result<(), String>;

/// The result of an exec probe of `command` that [`Runtime::exec`] ran (or could not run) with
/// `timeout`: passes on exit code 0; otherwise says the exit code and the start of its stderr,
/// the signal, the timeout, or the error.
pub fn exec_probe_result(
    command: &[String],
    timeout: Duration,
    out: Result<ExecOutput, RuntimeError>,
) -> ProbeResult {
    let out = out.map_err(|err| format!("exec {command:?}: {err}"))?;
    if out.timed_out {
        return Err(format!("exec {command:?}: no answer within {timeout:?}"));
    }
    match out.code {
        Some(0) => Ok(()),
        Some(c) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.trim().chars().take(200).collect();
            Err(format!(
                "exec {command:?}: exit {c}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            ))
        }
        None => Err(format!(
            "exec {command:?}: killed by signal {}",
            out.signal.unwrap_or_default()
        )),
    }
}

/// The name a runtime [offers](Runtime::offers) for templates that run a command: the process
/// runtime's (a node advertises it in `status.runtimes`).
pub const OFFERS_COMMANDS: &str = "process";

/// The name a runtime [offers](Runtime::offers) for templates that run an image: the
/// containerd runtime's.
pub const OFFERS_IMAGES: &str = "containerd";

/// What a node must offer to run `template` ([`OFFERS_IMAGES`] for an image,
/// [`OFFERS_COMMANDS`] for a command): the scheduler matches it against the names in the
/// nodes' `status.runtimes`.
pub fn offer_needed_by(template: &Template) -> &'static str {
    if template.image.is_some() {
        OFFERS_IMAGES
    } else {
        OFFERS_COMMANDS
    }
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
    /// The image could not be pulled (the message carries the registry's reason); retried
    /// with backoff like a failed start.
    #[error("image pull failed: {0}")]
    ImagePull(String),
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
    /// The kinds of workload this runtime offers the scheduler (`process`, `containerd`): the
    /// names a node advertises in `status.runtimes`. Its [`info`](Runtime::info) name unless
    /// it combines several ([`Runtimes`]).
    fn offers(&self) -> Vec<String> {
        vec![self.info().name]
    }
    /// Whether this runtime can run `template`.
    fn supports(&self, template: &Template) -> bool;
    /// Whether workloads of `template` can join a network namespace the agent made
    /// ([`WorkloadSpec::network`]); the process runtime's stay on the host network.
    fn joins_network(&self, template: &Template) -> bool {
        let _ = template;
        false
    }
    /// What a start of workload `id` in progress is waiting for (`pulling IMAGE: 12.3 of
    /// 45.6 MB`), while it waits; `None` otherwise.
    fn progress(&self, id: &str) -> Option<String> {
        let _ = id;
        None
    }
    /// The offered runtimes that cannot be reached right now, each with the reason (checked
    /// on every heartbeat; a node does not offer them to the scheduler meanwhile).
    async fn unavailable(&self) -> Vec<(String, String)> {
        Vec::new()
    }
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
    /// Runs `command` inside the running workload (its namespaces, environment, working
    /// directory and user), killing it after `timeout`; output is captured, not interactive.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let _ = (command, timeout);
        Err(RuntimeError::Unsupported(format!(
            "{}: the {} runtime cannot run commands inside its workloads",
            id,
            self.info().name
        )))
    }
    /// Runs one check of a probe against running workload `id` and says whether it passed.
    /// Gives up after `timeout` (the result then says `no answer within TIMEOUT`), so a check
    /// never takes much longer. The default runs exec checks with [`Runtime::exec`] and refuses
    /// network checks; runtimes whose workloads listen implement them.
    async fn probe(&self, id: &str, action: &ProbeAction, timeout: Duration) -> ProbeResult {
        match action {
            ProbeAction::Exec { command } => {
                exec_probe_result(command, timeout, self.exec(id, command, timeout).await)
            }
            _ => Err(format!(
                "the {} runtime cannot run network probes",
                self.info().name
            )),
        }
    }
    /// Imports an image from an OCI image layout tarball on this machine (for nodes without a
    /// registry) under `name` (or the name the archive gives it); returns the name.
    async fn import_image(
        &self,
        archive: &std::path::Path,
        name: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let _ = (archive, name);
        Err(RuntimeError::Unsupported(format!(
            "the {} runtime has no images",
            self.info().name
        )))
    }
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

/// Several runtimes on one node: each workload runs in the first runtime that
/// [supports](Runtime::supports) its template (commands in the process runtime, images in
/// containerd); everything else goes to the runtime that knows the workload.
pub struct Runtimes {
    all: Vec<std::sync::Arc<dyn Runtime>>,
    events: broadcast::Sender<RuntimeEvent>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.all.iter().map(|r| r.info().name))
            .finish()
    }
}

impl Runtimes {
    /// Combines `all` (in order of preference). Must be called inside a tokio runtime: the
    /// runtimes' events are forwarded into one stream.
    pub fn new(all: Vec<std::sync::Arc<dyn Runtime>>) -> Runtimes {
        let (events, _) = broadcast::channel(1024);
        let forwarders = all
            .iter()
            .map(|r| {
                let mut rx = r.events();
                let tx = events.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(e) => {
                                let _ = tx.send(e);
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                })
            })
            .collect();
        Runtimes {
            all,
            events,
            forwarders,
        }
    }

    /// The runtime that knows workload `id`.
    async fn owner(&self, id: &str) -> Result<&std::sync::Arc<dyn Runtime>, RuntimeError> {
        for r in &self.all {
            if r.list().await?.iter().any(|w| w.id == id) {
                return Ok(r);
            }
        }
        Err(RuntimeError::NotFound(id.into()))
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        self.forwarders.iter().for_each(|f| f.abort());
    }
}

#[async_trait]
impl Runtime for Runtimes {
    fn info(&self) -> RuntimeInfo {
        let infos: Vec<RuntimeInfo> = self.all.iter().map(|r| r.info()).collect();
        RuntimeInfo {
            name: infos
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            limits_enforced: infos.iter().all(|i| i.limits_enforced),
            limits_note: infos
                .iter()
                .map(|i| format!("{}: {}", i.name, i.limits_note))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    fn offers(&self) -> Vec<String> {
        self.all.iter().flat_map(|r| r.offers()).collect()
    }

    fn progress(&self, id: &str) -> Option<String> {
        self.all.iter().find_map(|r| r.progress(id))
    }

    async fn unavailable(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for r in &self.all {
            out.extend(r.unavailable().await);
        }
        out
    }

    fn supports(&self, template: &Template) -> bool {
        self.all.iter().any(|r| r.supports(template))
    }

    fn joins_network(&self, template: &Template) -> bool {
        self.all
            .iter()
            .find(|r| r.supports(template))
            .is_some_and(|r| r.joins_network(template))
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<Workload, RuntimeError> {
        // A workload that exited in one runtime and now needs another is forgotten there.
        let target = self
            .all
            .iter()
            .find(|r| r.supports(&spec.template))
            .ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "no runtime on this node runs this template (offered: {})",
                    self.offers().join(", ")
                ))
            })?;
        if let Ok(owner) = self.owner(&spec.id).await {
            if !std::sync::Arc::ptr_eq(owner, target) {
                owner.remove(&spec.id).await?;
            }
        }
        target.start(spec).await
    }

    async fn stop(
        &self,
        id: &str,
        signal: &str,
        grace: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        self.owner(id).await?.stop(id, signal, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.owner(id).await?.remove(id).await
    }

    async fn list(&self) -> Result<Vec<Workload>, RuntimeError> {
        let mut out = Vec::new();
        for r in &self.all {
            out.extend(r.list().await?);
        }
        Ok(out)
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        self.owner(id).await?.logs(id, opts).await
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.owner(id).await?.exec(id, command, timeout).await
    }

    async fn probe(&self, id: &str, action: &ProbeAction, timeout: Duration) -> ProbeResult {
        match self.owner(id).await {
            Ok(r) => r.probe(id, action, timeout).await,
            Err(e) => Err(e.to_string()),
        }
    }

    async fn import_image(
        &self,
        archive: &std::path::Path,
        name: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let mut last = None;
        for r in &self.all {
            match r.import_image(archive, name).await {
                Err(e @ RuntimeError::Unsupported(_)) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| RuntimeError::Unsupported("no runtime on this node".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `opts` keeps of `text`, read in blocks of every size from 1 to 5 (all must agree).
    fn check(text: &str, tail_bytes: Option<u64>, tail_lines: Option<u64>, expect: &str) {
        let opts = LogOptions {
            follow: false,
            tail_bytes,
            tail_lines,
        };
        let bytes = text.as_bytes();
        for block in 1..=5 {
            let start = log_start_in_blocks(
                bytes.len() as u64,
                &opts,
                |pos, len| {
                    let from = pos as usize;
                    Ok(bytes[from..(from + len).min(bytes.len())].to_vec())
                },
                block,
            )
            .unwrap();
            assert_eq!(
                &text[start as usize..],
                expect,
                "{text:?} bytes {tail_bytes:?} lines {tail_lines:?} block {block}"
            );
        }
    }

    #[test]
    fn tails_start_at_line_starts() {
        let two = "line one\nline two\n";
        check(two, None, None, two);
        check(two, Some(100), None, two);
        check(two, Some(9), None, "line two\n");
        check(two, Some(12), None, "line two\n");
        // No line starts within the last 7 bytes: the cut is all that fits.
        check(two, Some(7), None, "ne two\n");
        check(two, Some(0), None, "");
        check("aa\nbbbb\ncccc\n", Some(12), None, "bbbb\ncccc\n");
        check("a\nb\nc\n", None, Some(1), "c\n");
        check("a\nb\nc\n", None, Some(2), "b\nc\n");
        check("a\nb\nc\n", None, Some(5), "a\nb\nc\n");
        check("a\nb\nc\n", None, Some(0), "");
        check("a\nb\nc", None, Some(1), "c");
        check("a\nb\nc", None, Some(2), "b\nc");
        check("\n\n\n", None, Some(2), "\n\n");
        // Both: the shorter of the two.
        check("a\nb\nc\nd\n", Some(4), Some(3), "c\nd\n");
        check("a\nb\nc\nd\n", Some(6), Some(1), "d\n");
        check("", Some(3), Some(3), "");
        // A partial last line (still being written) starts a line of its own.
        check("done\nhalf", Some(6), None, "half");
    }
}
