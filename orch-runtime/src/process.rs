//! The process runtime: each workload is a real child process in its own process group, with
//! its output in a size-capped file, limits in cgroups where the machine allows, and a state
//! file so that a restarted runtime re-adopts what still runs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::model::object::{BoundPort, ExitStatus, PortSpec, Protocol, Template};
use orch_core::model::quantity::Timestamp;
use orch_core::runtime::{
    signal_number, LogOptions, LogStream, Runtime, RuntimeError, RuntimeEvent, RuntimeInfo,
    Workload, WorkloadSpec, WorkloadState,
};
use rustix::process::{Pid, Signal};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use crate::cgroup::{self, Cgroups};
use crate::logs::{self, LOG_FILE};
use crate::procfs;
use crate::state::{self, Proc, Record, STATE_FILE};

/// Environment variables passed through from the runtime's own environment.
const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];
/// How often logs are checked for rotation.
const ROTATE_EVERY: Duration = Duration::from_secs(1);
/// How often an adopted process is checked when pidfds are unavailable.
const POLL_EXIT: Duration = Duration::from_millis(100);
/// How long to wait for a process to die after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an ended run waits for its log writer to drain the pipe and exit.
const WRITER_WAIT: Duration = Duration::from_secs(1);

/// Configuration of a [`ProcessRuntime`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Where workload directories (`<id>/state.json`, `<id>/output.log`, `<id>/work`) live.
    pub state_dir: PathBuf,
    /// The address workloads are reached at (and dynamic ports are picked on).
    pub host_ip: String,
    /// Directories searched for a bare command name before `PATH`.
    pub search_path: Vec<PathBuf>,
    /// The most a workload's log file holds before it is rotated: a hard cap with a
    /// [`log_writer`](ProcessConfig::log_writer), else a soft one (checked every second).
    pub log_max_bytes: u64,
    /// How many rotated log files are kept.
    pub log_keep: usize,
    /// The command (program, then leading arguments) of a log writer process, to which the
    /// runtime appends `FILE MAX_BYTES KEEP`. Each run then writes its output to a pipe that
    /// the writer, started beside it, copies into `FILE` with [`copy_capped`](crate::copy_capped)
    /// (never past `MAX_BYTES`, keeping `KEEP` rotated files) until every holder of the pipe
    /// has closed it. The writer is not a thread of this process, so it outlives the runtime
    /// with the workload and is re-adopted with it (orchd passes `orchd log-writer`).
    ///
    /// With `None` (the default), or when the writer cannot be started, output goes straight
    /// to the file and the cap is soft: the runtime rotates by copy-and-truncate once a second,
    /// so a fast writer can outgrow it by what it writes in a second.
    pub log_writer: Option<Vec<OsString>>,
    /// Where the cgroup file system is mounted; `/sys/fs/cgroup` when `None`.
    pub cgroup_root: Option<PathBuf>,
}

impl ProcessConfig {
    /// The defaults for `state_dir`: host ip `127.0.0.1`, no extra search path, 10 MiB logs with
    /// one rotated file kept, cgroups at `/sys/fs/cgroup`.
    pub fn new(state_dir: impl Into<PathBuf>) -> ProcessConfig {
        ProcessConfig {
            state_dir: state_dir.into(),
            host_ip: "127.0.0.1".into(),
            search_path: Vec::new(),
            log_max_bytes: 10 << 20,
            log_keep: 1,
            cgroup_root: None,
            log_writer: None,
        }
    }
}

/// A [`Runtime`] that runs each workload as a child process.
///
/// - The process gets its own process group, which [`Runtime::stop`] signals as a whole; with
///   cgroups, every process left in the workload's cgroup is killed too, so nothing it spawned
///   outlives it.
/// - Its stdout and stderr go to `state_dir/<id>/output.log`, never through this process, so
///   workloads keep running when the runtime's host process stops: through a pipe to a log
///   writer process of its own ([`ProcessConfig::log_writer`], which holds the size cap
///   exactly and outlives this process with the workload), or straight to the file.
/// - `state_dir/<id>/state.json` records the pid and the process start time; a new runtime on
///   the same state directory re-adopts processes that still run (the start time guards
///   against a reused pid: a process that merely has the recorded pid is never touched).
/// - Exit codes are known for processes this runtime spawned. For adopted processes (spawned by
///   an earlier runtime, so not our children) the exit code cannot be known: they are reported
///   as ended with neither code nor signal (only `oom_killed` can still be told, from the
///   cgroup).
///
/// Dropping the runtime leaves workloads running.
pub struct ProcessRuntime {
    inner: Arc<Inner>,
    /// An exclusive `flock` on `state_dir/.lock`: one runtime per state directory.
    _lock: std::fs::File,
}

struct Inner {
    config: ProcessConfig,
    cgroups: Cgroups,
    workloads: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<RuntimeEvent>,
    /// Background tasks, aborted when the runtime is dropped.
    tasks: Mutex<Vec<AbortHandle>>,
    /// Tells successive runs of the same workload id apart.
    generation: AtomicU64,
    /// Serialises start and remove.
    ops: tokio::sync::Mutex<()>,
    /// Where replicas' secret and config files and tmpfs mounts go (`/dev/shm/orch-TAG`).
    tmpfs: PathBuf,
}

struct Entry {
    record: Record,
    generation: u64,
    /// Becomes `Some` when the process has ended.
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// What the exit watcher of one run needs.
struct Run {
    id: String,
    generation: u64,
    pid: i32,
    cgroups: Vec<PathBuf>,
    exit: watch::Sender<Option<ExitStatus>>,
    writer: Option<Writer>,
}

/// A run's log writer process.
enum Writer {
    /// Spawned by this runtime.
    Child(tokio::process::Child),
    /// Spawned by an earlier runtime on the same state directory.
    Adopted(Proc),
}

impl Writer {
    /// Waits up to `limit` for the writer to drain the pipe and exit.
    async fn wait(self, limit: Duration) {
        let done = match self {
            Writer::Child(mut c) => tokio::time::timeout(limit, c.wait()).await.is_ok(),
            Writer::Adopted(p) => tokio::time::timeout(limit, wait_foreign(p.pid, p.start_time))
                .await
                .is_ok(),
        };
        if !done {
            // Something outside the workload's cgroup still holds the pipe.
            tracing::debug!("process runtime: the log writer outlives its run");
        }
    }
}

impl ProcessRuntime {
    /// Opens the runtime on `config.state_dir` (created if missing), detects cgroups, and
    /// restores the workloads recorded there: those whose process still runs (same pid, same
    /// start time) are adopted as running, the others are recorded as exited.
    ///
    /// Fails with [`RuntimeError::Unavailable`] when another runtime uses the directory.
    pub async fn new(config: ProcessConfig) -> Result<ProcessRuntime, RuntimeError> {
        let dir = config.state_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
            context: format!("cannot create state directory {}", dir.display()),
            source,
        })?;
        // A child spawned (by anyone in this process) shares the open lock file until it execs,
        // so a lock released a moment ago may still look held: retry briefly.
        let mut tries = 0;
        let lock = loop {
            match lock_dir(&dir) {
                Err(RuntimeError::Unavailable(_)) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        };
        let instance = instance_name(&dir);
        let cgroup_root = config.cgroup_root.clone();
        let cgroups =
            tokio::task::spawn_blocking(move || Cgroups::detect(cgroup_root.as_deref(), &instance))
                .await
                .map_err(|e| RuntimeError::Other(Box::new(e)))?;
        if !cgroups.enforced() {
            tracing::info!(note = cgroups.note(), "process runtime");
        }
        let tmpfs = crate::mounts::tmpfs_root(
            &crate::mounts::tag_of(&config.state_dir),
            &config.state_dir.join(".tmpfs"),
        );
        let inner = Arc::new(Inner {
            tmpfs,
            config,
            cgroups,
            workloads: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(1024).0,
            tasks: Mutex::new(Vec::new()),
            generation: AtomicU64::new(1),
            ops: tokio::sync::Mutex::new(()),
        });
        inner.restore().await?;
        let me = inner.clone();
        inner.spawn(async move { me.rotate_logs().await });
        Ok(ProcessRuntime { inner, _lock: lock })
    }

    /// The directory holding workload `id`'s state, logs and default working directory.
    pub fn workload_dir(&self, id: &str) -> PathBuf {
        self.inner.config.state_dir.join(id)
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        // The tasks hold the inner state; without this they would keep watching (and the inner
        // state would never be freed). Workloads themselves keep running.
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        self.inner.cgroups.release();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, RuntimeError> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| RuntimeError::Io {
            context: format!("cannot open {}", path.display()),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(RuntimeError::Unavailable(format!(
            "state directory {} is in use by another process runtime",
            dir.display()
        ))),
        Err(e) => Err(RuntimeError::Io {
            context: format!("cannot lock {}", path.display()),
            source: e.into(),
        }),
    }
}

/// A short stable name for the runtime on `dir` (FNV-1a of its canonical path), naming its
/// cgroup directory.
fn instance_name(dir: &Path) -> String {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h & 0xffff_ffff)
}

impl Inner {
    fn dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join(id)
    }

    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task).abort_handle();
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Reads every `state_dir/*/state.json`; adopts what still runs.
    async fn restore(self: &Arc<Self>) -> Result<(), RuntimeError> {
        let dir = self.config.state_dir.clone();
        let entries = std::fs::read_dir(&dir).map_err(|source| RuntimeError::Io {
            context: format!("cannot read state directory {}", dir.display()),
            source,
        })?;
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path().join(STATE_FILE);
            let mut record = match state::read(&path) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "process runtime: skipping unreadable state file");
                    continue;
                }
            };
            let generation = self.generation.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = watch::channel(record.exit.clone());
            if record.exit.is_none() {
                if procfs::is_alive(record.pid, record.start_time) {
                    tracing::info!(workload = %record.id, pid = record.pid, "process runtime: adopted");
                    let run = Run {
                        id: record.id.clone(),
                        generation,
                        pid: record.pid,
                        cgroups: record.cgroups.clone(),
                        exit: tx,
                        writer: record.log_writer.map(Writer::Adopted),
                    };
                    let start_time = record.start_time;
                    lock(&self.workloads).insert(
                        record.id.clone(),
                        Entry {
                            record,
                            generation,
                            exit: rx,
                        },
                    );
                    let me = self.clone();
                    self.spawn(async move {
                        wait_foreign(run.pid, start_time).await;
                        me.finish(run, unknown_exit()).await;
                    });
                    continue;
                }
                // Dead, or its pid now belongs to another process: never signal it.
                let status = ExitStatus {
                    oom_killed: cgroup::oom_killed(&record.cgroups),
                    ..ExitStatus::default()
                };
                record.exit = Some(status.clone());
                let _ = tx.send(Some(status));
                if let Err(e) = persist(&path, &record).await {
                    tracing::warn!(workload = %record.id, error = %e, "process runtime: cannot record exit");
                }
            }
            lock(&self.workloads).insert(
                record.id.clone(),
                Entry {
                    record,
                    generation,
                    exit: rx,
                },
            );
        }
        Ok(())
    }

    /// Records how run `run` ended: cleans up what it left behind, lets its log writer finish,
    /// persists, notifies (so its logs are complete once the exit is reported).
    async fn finish(&self, mut run: Run, mut status: ExitStatus) {
        // No orphans: whatever the process left in its group or cgroup goes with it. (The group
        // id is the leader's pid; while members remain the kernel does not reuse it.)
        if let Some(p) = Pid::from_raw(run.pid) {
            let _ = rustix::process::kill_process_group(p, Signal::KILL);
        }
        cgroup::kill_all(&run.cgroups);
        if let Some(w) = run.writer.take() {
            w.wait(WRITER_WAIT).await;
        }
        if (status.signal == Some(9) || (status.signal.is_none() && status.code.is_none()))
            && cgroup::oom_killed(&run.cgroups)
        {
            status.oom_killed = true;
        }
        status.at = Some(Timestamp::now());
        let record = {
            let mut g = lock(&self.workloads);
            match g.get_mut(&run.id) {
                Some(e) if e.generation == run.generation => {
                    e.record.exit = Some(status.clone());
                    Some(e.record.clone())
                }
                _ => None,
            }
        };
        if let Some(record) = record {
            if let Err(e) = persist(&self.dir(&run.id).join(STATE_FILE), &record).await {
                tracing::warn!(workload = %run.id, error = %e, "process runtime: cannot record exit");
            }
        }
        tracing::debug!(workload = %run.id, pid = run.pid, status = %status, "process runtime: exited");
        let _ = run.exit.send(Some(status.clone()));
        let _ = self
            .events
            .send(RuntimeEvent::Exited { id: run.id, status });
    }

    /// Every second, rotates the logs of running workloads that outgrew the cap.
    async fn rotate_logs(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ROTATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let paths: Vec<PathBuf> = lock(&self.workloads)
                .values()
                .filter(|e| e.record.exit.is_none() && e.record.log_writer.is_none())
                .map(|e| self.dir(&e.record.id).join(LOG_FILE))
                .collect();
            let (max, keep) = (self.config.log_max_bytes, self.config.log_keep);
            let _ = tokio::task::spawn_blocking(move || {
                for p in paths {
                    if let Err(e) = logs::rotate_if_needed(&p, max, keep) {
                        tracing::warn!(file = %p.display(), error = %e, "process runtime: cannot rotate log");
                    }
                }
            })
            .await;
        }
    }

    /// Where the output of a new run of `id` goes: the write end of a pipe read by a new log
    /// writer process (returned with it), or the log file itself when there is no writer.
    fn log_sink(
        &self,
        id: &str,
        log_path: &Path,
    ) -> Result<(std::os::fd::OwnedFd, Option<(tokio::process::Child, Proc)>), RuntimeError> {
        if let Some(command) = self.config.log_writer.as_ref().filter(|c| !c.is_empty()) {
            match spawn_writer(command, log_path, &self.config) {
                Ok((fd, child, p)) => return Ok((fd, Some((child, p)))),
                Err(e) => {
                    tracing::warn!(workload = %id, command = ?command, error = %e, "process runtime: cannot start the log writer; output goes straight to the file, capped only once a second");
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(io_error(format!("cannot open {}", log_path.display())))?;
        Ok((file.into(), None))
    }

    /// Signals the group of a running process, after checking it is still the recorded one.
    fn signal_group(&self, pid: i32, start_time: u64, signal: Signal) {
        if !procfs::is_alive(pid, start_time) {
            return;
        }
        if let Some(p) = Pid::from_raw(pid) {
            if let Err(e) = rustix::process::kill_process_group(p, signal) {
                tracing::debug!(pid, error = %e, "process runtime: kill failed");
            }
        }
    }

    async fn stop(
        &self,
        id: &str,
        signal: Signal,
        grace: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let (mut rx, pid, start_time, cgroups) = {
            let g = lock(&self.workloads);
            let e = g.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            if let Some(s) = &e.record.exit {
                return Ok(s.clone());
            }
            (
                e.exit.clone(),
                e.record.pid,
                e.record.start_time,
                e.record.cgroups.clone(),
            )
        };
        self.signal_group(pid, start_time, signal);
        if let Some(s) = wait_exit(&mut rx, grace).await? {
            return Ok(s);
        }
        tracing::debug!(workload = %id, "process runtime: grace period over, killing");
        self.signal_group(pid, start_time, Signal::KILL);
        cgroup::kill_all(&cgroups);
        match wait_exit(&mut rx, KILL_WAIT).await? {
            Some(s) => Ok(s),
            None => Err(RuntimeError::Io {
                context: format!(
                    "workload {id} (pid {pid}) did not exit {}s after SIGKILL",
                    KILL_WAIT.as_secs()
                ),
                source: io::ErrorKind::TimedOut.into(),
            }),
        }
    }
}

/// Starts the log writer `command` on `log_path`; returns the write end of its pipe.
fn spawn_writer(
    command: &[OsString],
    log_path: &Path,
    config: &ProcessConfig,
) -> io::Result<(std::os::fd::OwnedFd, tokio::process::Child, Proc)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .arg(log_path)
        .arg(config.log_max_bytes.to_string())
        .arg(config.log_keep.to_string())
        .env_clear()
        .current_dir(log_path.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Not in the workload's group, so signals meant for the workload leave it draining.
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    // Closes this process's read end: the pipe's reader is the writer alone.
    drop(cmd);
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| io::Error::other("the log writer has no pid"))?;
    let start_time = procfs::stat(pid)?.start_time;
    Ok((write, child, Proc { pid, start_time }))
}

/// Waits up to `limit` for the exit status; `None` when time runs out.
async fn wait_exit(
    rx: &mut watch::Receiver<Option<ExitStatus>>,
    limit: Duration,
) -> Result<Option<ExitStatus>, RuntimeError> {
    match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
        Ok(Ok(s)) => Ok(s.clone()),
        Ok(Err(_)) => Err(RuntimeError::Unavailable(
            "the runtime stopped watching the workload".into(),
        )),
        Err(_) => Ok(None),
    }
}

/// The status of a process that ended without us being its parent: unknowable.
fn unknown_exit() -> ExitStatus {
    ExitStatus::default()
}

/// Waits until the process `pid` that started at `start_time` (not our child) has ended: with a
/// pidfd where the kernel has them (readable once the process exits), else by polling `/proc`.
async fn wait_foreign(pid: i32, start_time: u64) {
    if let Some(p) = Pid::from_raw(pid) {
        if let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK) {
            // The pidfd was opened by pid: make sure it still is the recorded process.
            if !procfs::is_alive(pid, start_time) {
                return;
            }
            // Deprecated since tokio 1.5x because a generic `T` could close or swap its fd while
            // registered; an `OwnedFd` moved into the `AsyncFd` cannot, so this use is sound (and
            // the replacement, `register_with_interest`, is `unsafe`, which this crate forbids).
            #[allow(deprecated)]
            let afd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
            if let Ok(afd) = afd {
                if afd.readable().await.is_ok() {
                    return;
                }
            }
        }
    }
    while procfs::is_alive(pid, start_time) {
        tokio::time::sleep(POLL_EXIT).await;
    }
}

/// Writes a state file without blocking the async runtime.
async fn persist(path: &Path, record: &Record) -> io::Result<()> {
    let (path, record) = (path.to_path_buf(), record.clone());
    tokio::task::spawn_blocking(move || state::write(&path, &record))
        .await
        .map_err(io::Error::other)?
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Io { context, source }
}

/// Rejects ids that are not a single plain path component.
pub(crate) fn check_id(id: &str) -> Result<(), RuntimeError> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0']) || id.starts_with('.') {
        return Err(RuntimeError::StartFailed(format!(
            "invalid workload id {id:?}: it names a directory, so it must not be empty, start with a dot or contain a slash"
        )));
    }
    Ok(())
}

/// Picks the host ports: fixed ones as given, dynamic ones by binding port 0 on `host_ip`.
/// All probe sockets stay open until every port is picked, so two dynamic ports differ.
pub(crate) fn allocate_ports(
    host_ip: &str,
    specs: &[PortSpec],
) -> Result<Vec<BoundPort>, RuntimeError> {
    let mut probes: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut out = Vec::with_capacity(specs.len());
    for p in specs {
        let port = match p.port {
            Some(port) => port,
            None => {
                let context = || format!("cannot pick a free port on {host_ip} for {:?}", p.name);
                let addr = (host_ip, 0);
                match p.protocol {
                    Protocol::Tcp => {
                        let l = std::net::TcpListener::bind(addr).map_err(io_error(context()))?;
                        let port = l.local_addr().map_err(io_error(context()))?.port();
                        probes.push(Box::new(l));
                        port
                    }
                    Protocol::Udp => {
                        let s = std::net::UdpSocket::bind(addr).map_err(io_error(context()))?;
                        let port = s.local_addr().map_err(io_error(context()))?.port();
                        probes.push(Box::new(s));
                        port
                    }
                }
            }
        };
        out.push(BoundPort {
            name: p.name.clone(),
            port,
        });
    }
    Ok(out)
}

/// `ORCH_PORT_<NAME>` for a port name.
pub(crate) fn port_var(name: &str) -> String {
    format!("ORCH_PORT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// The environment of a workload, in order (later entries win), and how many of its first
/// entries are inherited from orchd (`PATH`, `HOME`, ...) rather than set for the workload.
/// The template's env values are expanded (`$(PORT)`, see [`orch_core::model::expand`]).
fn environment(
    spec: &WorkloadSpec,
    ports: &[BoundPort],
    host_ip: &str,
    root: Option<&Path>,
) -> (Vec<(String, String)>, usize) {
    let mut env: Vec<(String, String)> = INHERITED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    let inherited = env.len();
    // The address the ports were picked on, which is where the replica is reached.
    env.push(("ORCH_HOST_IP".into(), host_ip.to_string()));
    if let Some(root) = root {
        env.push(("ORCH_ROOT".into(), root.display().to_string()));
    }
    if let Some(dns) = &spec.dns {
        env.extend(dns.env());
    }
    env.extend(
        spec.extra_env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone())),
    );
    if let Some(first) = ports.first() {
        env.push(("PORT".into(), first.port.to_string()));
    }
    env.extend(
        ports
            .iter()
            .map(|p| (port_var(&p.name), p.port.to_string())),
    );
    let own = orch_core::model::expand::expand_env(&env[inherited..], &spec.template.env);
    env.extend(own);
    (env, inherited)
}

/// Everything `pipe` yields until it closes, keeping the first
/// [`EXEC_OUTPUT_MAX`](orch_core::runtime::EXEC_OUTPUT_MAX) bytes.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut p) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        match tokio::io::AsyncReadExt::read(&mut p, &mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = orch_core::runtime::EXEC_OUTPUT_MAX.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Where `setpriv` is looked for when the workload's environment has no `PATH`.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds a bare command name in `search_path`, then in the directories of `path_var`.
/// Names with a slash are used as they are.
fn resolve_command(
    name: &str,
    search_path: &[PathBuf],
    path_var: Option<&str>,
) -> Result<PathBuf, RuntimeError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let dirs: Vec<PathBuf> = search_path
        .iter()
        .cloned()
        .chain(
            path_var
                .unwrap_or_default()
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
        )
        .collect();
    for d in &dirs {
        let candidate = d.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(RuntimeError::StartFailed(if searched.is_empty() {
        format!("command {name:?} not found: no search path and no PATH")
    } else {
        format!(
            "command {name:?} not found in {} (search path, then PATH)",
            searched.join(", ")
        )
    }))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Turns a spawn error into a permanent start failure where retrying cannot help.
fn spawn_error(program: &Path, e: io::Error) -> RuntimeError {
    const ENOEXEC: i32 = 8;
    const E2BIG: i32 = 7;
    let permanent = matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || matches!(e.raw_os_error(), Some(ENOEXEC | E2BIG));
    if permanent {
        RuntimeError::StartFailed(format!("cannot run {}: {e}", program.display()))
    } else {
        RuntimeError::Io {
            context: format!("cannot run {}", program.display()),
            source: e,
        }
    }
}

fn to_workload(r: &Record) -> Workload {
    Workload {
        id: r.id.clone(),
        replica_uid: r.replica_uid.clone(),
        template_hash: r.template_hash.clone(),
        runtime_id: format!("pid {}", r.pid),
        state: match &r.exit {
            None => WorkloadState::Running,
            Some(s) => WorkloadState::Exited(s.clone()),
        },
        host_ip: r.host_ip.clone(),
        ip: None,
        ports: r.ports.clone(),
        started_at: r.started_at,
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "process".into(),
            limits_enforced: self.inner.cgroups.enforced(),
            limits_note: self.inner.cgroups.note().into(),
        }
    }

    fn supports(&self, template: &Template) -> bool {
        template.image.is_none() && !template.command.is_empty()
    }

    /// Runs `command` as the workload sees the world: the running process's environment
    /// (`/proc/PID/environ`) and working directory, in its cgroup, as a new process group
    /// killed after `timeout`.
    /// HTTP and TCP checks at the workload's address (hyper's HTTP/1.1 client), exec checks
    /// through [`exec`](Runtime::exec).
    async fn probe(
        &self,
        id: &str,
        action: &orch_core::runtime::ProbeAction,
        timeout: Duration,
    ) -> orch_core::runtime::ProbeResult {
        crate::probe::check(self, id, action, timeout).await
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<orch_core::runtime::ExecOutput, RuntimeError> {
        let (pid, start_time, cgroups) = match lock(&self.inner.workloads).get(id) {
            Some(e) if e.record.exit.is_none() => {
                (e.record.pid, e.record.start_time, e.record.cgroups.clone())
            }
            _ => return Err(RuntimeError::NotFound(id.into())),
        };
        let read = |what: &str| {
            let path = format!("/proc/{pid}/{what}");
            move |source| RuntimeError::Io {
                context: format!("exec in {id}: cannot read {path}"),
                source,
            }
        };
        // Right after the start the child may not have exec'd yet, and its environ reads
        // empty: wait (briefly) for the workload's own environment.
        let mut environ = Vec::new();
        for _ in 0..50 {
            environ = std::fs::read(format!("/proc/{pid}/environ")).map_err(read("environ"))?;
            if !environ.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(read("cwd"))?;
        if !procfs::is_alive(pid, start_time) {
            return Err(RuntimeError::NotFound(id.into()));
        }
        let env: Vec<(String, String)> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        let Some(first) = command.first() else {
            return Err(RuntimeError::StartFailed("exec: no command".into()));
        };
        let path_var = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v);
        let program = resolve_command(
            first,
            &self.inner.config.search_path,
            path_var.map(|s| &**s),
        )?;
        check_program(&program, &cwd)?;
        let mut cmd = command_in(&cgroups, false, &program, &command[1..]);
        cmd.env_clear()
            .envs(env)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| spawn_error(&program, e))?;
        let child_pid = child.id().and_then(|p| i32::try_from(p).ok());
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let (o, e, status) = tokio::join!(
                read_capped(out.take()),
                read_capped(err.take()),
                child.wait()
            );
            (o, e, status)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((stdout, stderr, status)) => {
                let status = status.map_err(|source| RuntimeError::Io {
                    context: format!("exec in {id}: wait"),
                    source,
                })?;
                Ok(orch_core::runtime::ExecOutput {
                    code: status.code(),
                    signal: status.signal(),
                    timed_out: false,
                    stdout,
                    stderr,
                })
            }
            Err(_) => {
                if let Some(p) = child_pid {
                    kill_group(p);
                }
                Ok(orch_core::runtime::ExecOutput {
                    code: None,
                    signal: Some(9),
                    timed_out: true,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                })
            }
        }
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<Workload, RuntimeError> {
        let inner = &self.inner;
        let t = &spec.template;
        check_id(&spec.id)?;
        if t.image.is_some() {
            return Err(RuntimeError::Unsupported(
                "the process runtime runs commands, not images".into(),
            ));
        }
        if t.command.is_empty() {
            return Err(RuntimeError::Unsupported(
                "the process runtime needs a command".into(),
            ));
        }
        if !t.capabilities.add.is_empty() || !t.capabilities.drop.is_empty() {
            return Err(RuntimeError::Unsupported(
                "capabilities apply to containers only; the process runtime runs commands".into(),
            ));
        }
        let user = process_user(t.user.as_deref())?;
        let _ops = inner.ops.lock().await;
        let (old_cgroups, old_writer, old_exit) = match lock(&inner.workloads).get(&spec.id) {
            Some(e) if e.record.exit.is_none() => {
                return Err(RuntimeError::AlreadyRunning(spec.id.clone()))
            }
            Some(e) => (
                e.record.cgroups.clone(),
                e.record.log_writer,
                e.record.exit.clone(),
            ),
            None => (Vec::new(), None, None),
        };

        let dir = inner.dir(&spec.id);
        let ports = allocate_ports(&inner.config.host_ip, &t.ports)?;
        let root = (!spec.mounts.is_empty()).then(|| dir.join("root"));
        if let Some(root) = &root {
            // Processes share the node's filesystem: each mount is a link at its path under
            // the replica's own root, which the process finds as $ORCH_ROOT.
            crate::mounts::link_process_mounts(
                root,
                &inner.tmpfs.join(&spec.id),
                &spec.mounts,
                user,
            )
            .map_err(|e| RuntimeError::StartFailed(format!("mounts: {e}")))?;
        }
        let (env, inherited) = environment(spec, &ports, &inner.config.host_ip, root.as_deref());
        // Kubernetes' `$(VAR)` expansion of command and args, from the workload's own variables.
        let argv = orch_core::model::expand::expand_args(
            &t.command.iter().chain(&t.args).cloned().collect::<Vec<_>>(),
            &env[inherited..],
        );
        let path_var = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v);
        let program = resolve_command(&argv[0], &inner.config.search_path, path_var.map(|s| &**s))?;
        let work_dir = match &t.working_dir {
            Some(w) => {
                let w = PathBuf::from(w);
                if !w.is_dir() {
                    return Err(RuntimeError::StartFailed(format!(
                        "working directory {} does not exist",
                        w.display()
                    )));
                }
                w
            }
            None => {
                let w = dir.join("work");
                std::fs::create_dir_all(&w)
                    .and_then(|()| match user {
                        Some((uid, gid)) => std::os::unix::fs::chown(&w, Some(uid), Some(gid)),
                        None => Ok(()),
                    })
                    .map_err(io_error(format!("cannot create {}", w.display())))?;
                w
            }
        };
        check_program(&program, &work_dir)?;
        // Another user: `setpriv` switches to it once the cgroups are joined (as root).
        let (program, argv) = match user {
            None => (program, argv),
            Some((uid, gid)) => {
                let setpriv = resolve_command(
                    "setpriv",
                    &inner.config.search_path,
                    Some(path_var.map_or(SYSTEM_PATH, |p| p.as_str())),
                )
                .map_err(|_| {
                    RuntimeError::StartFailed(format!(
                        "user {}: switching users needs setpriv (util-linux) on the node",
                        t.user.as_deref().unwrap_or_default()
                    ))
                })?;
                let mut wrapped = vec![
                    setpriv.display().to_string(),
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                    "--".into(),
                    program.display().to_string(),
                ];
                wrapped.extend(argv.into_iter().skip(1));
                (setpriv, wrapped)
            }
        };
        // A writer still draining an earlier run (held open by a process that escaped it)
        // would rotate the files under the new one.
        if let Some(w) = old_writer {
            kill_proc(w);
        }
        if let Some(exit) = &old_exit {
            let path = dir.join(LOG_FILE);
            if let Err(e) = logs::mark_restart(&path, &restart_line(Timestamp::now(), exit)) {
                tracing::warn!(file = %path.display(), error = %e, "process runtime: cannot mark the restart in the log");
            }
        }
        let (log, writer) = inner.log_sink(&spec.id, &dir.join(LOG_FILE))?;
        let log2 = log.try_clone().map_err(io_error(format!(
            "cannot duplicate the output of {}",
            spec.id
        )))?;

        // A fresh cgroup per run (so the OOM counter is this run's).
        if !old_cgroups.is_empty() {
            cgroup::remove(&old_cgroups).await;
        }
        let cgroups = match inner.cgroups.create(&spec.id, &t.resources).await {
            Ok(c) => c,
            Err(e) if t.resources == Default::default() => {
                tracing::warn!(workload = %spec.id, error = %e, "process runtime: running without a cgroup");
                Vec::new()
            }
            Err(source) => {
                return Err(RuntimeError::Io {
                    context: format!("cannot set up the cgroup limiting {}", spec.id),
                    source,
                })
            }
        };

        // The child joins its cgroups itself, before it runs any of the workload's code.
        let strict = t.resources != Default::default();
        let mut cmd = command_in(&cgroups, strict, &program, &argv[1..]);
        cmd.env_clear()
            .envs(env)
            .current_dir(&work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(false);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                cgroup::remove(&cgroups).await;
                return Err(spawn_error(&program, e));
            }
        };
        drop(cmd);
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            // Cannot happen before the child is awaited.
            return Err(RuntimeError::Unavailable(
                "the child process has no pid".into(),
            ));
        };
        let start_time = match procfs::stat(pid) {
            Ok(s) => s.start_time,
            Err(e) => {
                tracing::warn!(workload = %spec.id, pid, error = %e, "process runtime: cannot read the start time; the workload cannot be re-adopted");
                0
            }
        };
        let record = Record {
            version: 1,
            id: spec.id.clone(),
            replica_uid: spec.replica_uid.clone(),
            template_hash: spec.template_hash.clone(),
            pid,
            start_time,
            ports,
            host_ip: inner.config.host_ip.clone(),
            started_at: Timestamp::now(),
            exit: None,
            cgroups: cgroups.clone(),
            log_writer: writer.as_ref().map(|(_, p)| *p),
        };
        if let Err(source) = persist(&dir.join(STATE_FILE), &record).await {
            // Untracked, it could never be stopped after a restart: better not to run it.
            kill_group(pid);
            cgroup::remove(&cgroups).await;
            return Err(RuntimeError::Io {
                context: format!("cannot write the state of {}", spec.id),
                source,
            });
        }
        let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let workload = to_workload(&record);
        lock(&inner.workloads).insert(
            spec.id.clone(),
            Entry {
                record,
                generation,
                exit: rx,
            },
        );
        let run = Run {
            id: spec.id.clone(),
            generation,
            pid,
            cgroups,
            exit: tx,
            writer: writer.map(|(c, _)| Writer::Child(c)),
        };
        let me = inner.clone();
        let mut child = child;
        inner.spawn(async move {
            let status = match child.wait().await {
                Ok(s) => ExitStatus {
                    code: s.code(),
                    signal: s.signal(),
                    ..ExitStatus::default()
                },
                Err(e) => {
                    tracing::warn!(workload = %run.id, error = %e, "process runtime: cannot wait for the process");
                    wait_foreign(run.pid, start_time).await;
                    unknown_exit()
                }
            };
            me.finish(run, status).await;
        });
        tracing::debug!(workload = %spec.id, pid, program = %program.display(), "process runtime: started");
        Ok(workload)
    }

    async fn stop(
        &self,
        id: &str,
        signal: &str,
        grace: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let sig = signal_number(signal).and_then(Signal::from_named_raw).unwrap_or_else(|| {
            tracing::warn!(workload = %id, signal, "process runtime: cannot send this signal, sending SIGTERM");
            Signal::TERM
        });
        self.inner.stop(id, sig, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let _ops = inner.ops.lock().await;
        let (cgroups, writer) = match lock(&inner.workloads).get(id) {
            Some(e) => (e.record.cgroups.clone(), e.record.log_writer),
            None => return Err(RuntimeError::NotFound(id.into())),
        };
        inner.stop(id, Signal::KILL, Duration::ZERO).await?;
        cgroup::remove(&cgroups).await;
        if let Some(w) = writer {
            kill_proc(w);
        }
        let tmp = inner.tmpfs.join(id);
        let _ = tokio::task::spawn_blocking(move || crate::mounts::remove_tree(&tmp)).await;
        let dir = inner.dir(id);
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(d)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(Err(source)) => {
                return Err(RuntimeError::Io {
                    context: format!("cannot remove {}", dir.display()),
                    source,
                })
            }
            Err(e) => return Err(RuntimeError::Other(Box::new(e))),
        }
        lock(&inner.workloads).remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Workload>, RuntimeError> {
        Ok(lock(&self.inner.workloads)
            .values()
            .map(|e| to_workload(&e.record))
            .collect())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        if !lock(&self.inner.workloads).contains_key(id) {
            return Err(RuntimeError::NotFound(id.into()));
        }
        let follow = opts.follow.then(|| {
            let id = id.to_string();
            logs::while_present(Arc::downgrade(&self.inner), move |i: &Inner| {
                lock(&i.workloads).contains_key(&id)
            })
        });
        Ok(logs::stream(
            self.inner.dir(id).join(LOG_FILE),
            self.inner.config.log_keep,
            &opts,
            follow,
        ))
    }
}

/// Joins the cgroups named by its arguments (`cgroup.procs` files up to `--`), then execs the
/// rest: the shell's pid, which the workload keeps, is in the cgroups before the workload's first
/// instruction, so nothing it forks can start outside them. With `$0` `strict`, failing to join
/// ends the run with exit code 125 (its reason in the log); otherwise the workload runs without.
const JOIN_CGROUPS: &str = r#"for f; do [ "$f" = -- ] && break; if ! echo $$ > "$f"; then echo "orch: cannot join the cgroup $f" >&2; [ "$0" = strict ] && exit 125; fi; shift; done; shift; exec "$@""#;

/// A command running `program` with `args`: directly without cgroups, else through
/// [`JOIN_CGROUPS`] (`/bin/sh`, which the workload replaces by `exec`, keeping the pid, the
/// process group and the start time the state file records).
fn command_in<I, S>(
    cgroups: &[PathBuf],
    strict: bool,
    program: &Path,
    args: I,
) -> tokio::process::Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    if cgroups.is_empty() {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        return cmd;
    }
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(JOIN_CGROUPS)
        .arg(if strict { "strict" } else { "lenient" })
        .args(cgroups.iter().map(|d| d.join("cgroup.procs")))
        .arg("--")
        .arg(program)
        .args(args);
    cmd
}

/// Refuses a `program` that cannot be executed (relative names are taken from `work_dir`),
/// as a spawn would, since the shell that joins the cgroups only finds out after the start (and
/// would run a file of another format as a shell script).
/// The uid and gid a process template's `user` (`UID` or `UID:GID`; the group defaults to
/// the uid's) names, `None` to run as the node agent; another user needs the agent to run as
/// root.
fn process_user(user: Option<&str>) -> Result<Option<(u32, u32)>, RuntimeError> {
    let Some(user) = user else {
        return Ok(None);
    };
    let bad = |why: &str| RuntimeError::StartFailed(format!("user {user:?}: {why}"));
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid: u32 = u
        .parse()
        .map_err(|_| bad("a process runs as a numeric UID or UID:GID (names need an image)"))?;
    let gid: u32 = if g.is_empty() {
        uid
    } else {
        g.parse()
            .map_err(|_| bad("a process runs as a numeric UID or UID:GID (names need an image)"))?
    };
    let (euid, egid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    if (uid, gid) == (euid, egid) {
        return Ok(None);
    }
    if euid != 0 {
        return Err(bad(&format!(
            "running a process as another user needs the node agent to run as root (it runs as UID {euid})"
        )));
    }
    Ok(Some((uid, gid)))
}

fn check_program(program: &Path, work_dir: &Path) -> Result<(), RuntimeError> {
    let full = work_dir.join(program);
    let refuse = |why: String| {
        Err(RuntimeError::StartFailed(format!(
            "cannot run {}: {why}",
            program.display()
        )))
    };
    if let Err(e) = std::fs::metadata(&full) {
        return refuse(e.to_string());
    }
    if !is_executable(&full) {
        return refuse("not an executable file".into());
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(&full)
        .and_then(|mut f| io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let known = head[..n].starts_with(b"\x7fELF") || head[..n].starts_with(b"#!");
    if !known && !binfmt_misc_in_use() {
        return refuse("not an executable format (neither ELF nor a #! script)".into());
    }
    Ok(())
}

/// Whether the kernel has extra executable formats registered (binfmt_misc), which the
/// ELF-or-`#!` check in [`check_program`] would not know.
fn binfmt_misc_in_use() -> bool {
    std::fs::read_dir("/proc/sys/fs/binfmt_misc").is_ok_and(|d| {
        d.flatten()
            .any(|e| !matches!(e.file_name().to_str(), Some("status" | "register")))
    })
}

/// The line between the output of a run that ended with `exit` and the next one, started `at`.
pub(crate) fn restart_line(at: Timestamp, exit: &ExitStatus) -> String {
    let how = match (exit.code, exit.signal, exit.oom_killed) {
        (None, None, false) => "exit status unknown".to_string(),
        _ => exit.to_string(),
    };
    format!("--- restarted at {at} ({how}) ---\n")
}

/// SIGKILLs the process `p` if it still is the one recorded.
fn kill_proc(p: Proc) {
    if procfs::is_alive(p.pid, p.start_time) {
        if let Some(pid) = Pid::from_raw(p.pid) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

/// SIGKILLs the process group led by `pid`, which this runtime just spawned.
fn kill_group(pid: i32) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(p, Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_search_path_before_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [&a, &b] {
            let p = d.path().join("tool");
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path_var = b.path().display().to_string();
        let found = resolve_command("tool", &[a.path().into()], Some(&path_var)).unwrap();
        assert_eq!(found, a.path().join("tool"));
        let found = resolve_command("tool", &[], Some(&path_var)).unwrap();
        assert_eq!(found, b.path().join("tool"));
        let err = resolve_command("nope", &[a.path().into()], Some(&path_var)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"nope\"") && msg.contains(&path_var), "{msg}");
        assert_eq!(
            resolve_command("./x", &[], None).unwrap(),
            PathBuf::from("./x")
        );
    }

    #[test]
    fn port_variable_names() {
        assert_eq!(port_var("http"), "ORCH_PORT_HTTP");
        assert_eq!(port_var("grpc-web"), "ORCH_PORT_GRPC_WEB");
    }

    #[test]
    fn ids_must_be_plain_names() {
        assert!(check_id("default.web-0").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dynamic_ports_differ() {
        let specs: Vec<PortSpec> = ["a", "b", "c"]
            .iter()
            .map(|n| PortSpec {
                name: (*n).into(),
                port: None,
                host_port: None,
                protocol: Protocol::Tcp,
            })
            .chain([PortSpec {
                name: "fixed".into(),
                port: Some(4321),
                host_port: None,
                protocol: Protocol::Udp,
            }])
            .collect();
        let ports = allocate_ports("127.0.0.1", &specs).unwrap();
        assert_eq!(ports.len(), 4);
        assert_ne!(ports[0].port, ports[1].port);
        assert_ne!(ports[1].port, ports[2].port);
        assert_eq!(ports[3].port, 4321);
    }
}
