//! The process runtime: each workload is a real child process in its own process group.
//!
//! - Output goes straight from the process to `STATE/<id>/output.log` (opened with `O_APPEND`),
//!   never through a pipe to this process, so workloads survive the daemon's restart. A
//!   background task caps the file by copy-and-truncate rotation.
//! - Every workload has `STATE/<id>/state.json` (written atomically) with its pid and the
//!   process start time from `/proc/<pid>/stat`. A new runtime on the same state directory
//!   re-adopts live workloads whose start time still matches — a reused pid never does.
//! - Stop sends the stop signal to the whole process group, then SIGKILL after the grace
//!   period, and kills whatever remains in the workload's cgroup: no orphans.
//! - CPU and memory limits use cgroups when the machine allows; otherwise
//!   [`RuntimeInfo::limits_note`] says why they are not enforced.
//!
//! The exit code of an *adopted* process cannot be known (it is not our child); it is reported
//! as an [`ExitStatus`] with neither code nor signal.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use orch_core::object::{BoundPort, ExitStatus, Protocol, Template};
use orch_core::quantity::Timestamp;
use orch_core::runtime::{
    signal_number, LogOptions, LogStream, Runtime, RuntimeError, RuntimeEvent, RuntimeInfo,
    Workload, WorkloadSpec, WorkloadState,
};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::cgroup::Cgroups;

/// How the process runtime is set up.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// Where workload state and logs live.
    pub state_dir: PathBuf,
    /// The address workloads are reached at (and dynamic ports are taken on).
    pub host_ip: String,
    /// Directories searched for a bare command name before `PATH`.
    pub search_path: Vec<PathBuf>,
    /// A log file larger than this is rotated.
    pub log_max_bytes: u64,
    /// How many rotated log files are kept.
    pub log_keep: usize,
    /// The cgroup mount to put limits under (`None`: do not enforce limits).
    pub cgroup_mount: Option<PathBuf>,
}

impl ProcessConfig {
    /// Defaults with state under `state_dir`.
    pub fn new(state_dir: PathBuf) -> ProcessConfig {
        ProcessConfig {
            state_dir,
            host_ip: "127.0.0.1".into(),
            search_path: Vec::new(),
            log_max_bytes: 10 << 20,
            log_keep: 1,
            cgroup_mount: Some(PathBuf::from("/sys/fs/cgroup")),
        }
    }
}

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    replica_uid: String,
    template_hash: String,
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: the PID-reuse guard.
    start_ticks: u64,
    ports: Vec<BoundPort>,
    host_ip: String,
    started_at: Timestamp,
    #[serde(default)]
    exit: Option<ExitStatus>,
}

struct Entry {
    record: Record,
    exited: watch::Receiver<Option<ExitStatus>>,
}

struct Inner {
    cfg: ProcessConfig,
    cgroups: Option<Cgroups>,
    limits_note: String,
    entries: Mutex<HashMap<String, Entry>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroups {
            cg.cleanup();
        }
    }
}

/// Runs workloads as child processes. Cheap to clone.
#[derive(Clone)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// The start time (clock ticks since boot) of a live, non-zombie process.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, starttime field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A short, stable name for this runtime's cgroup scope: `rt-` and a hash of its state dir.
fn scope_of(state_dir: &Path) -> String {
    let abs = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("rt-{:012x}", h & 0xffff_ffff_ffff)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn free_port(ip: &str, protocol: Protocol) -> std::io::Result<u16> {
    match protocol {
        Protocol::Tcp => Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port()),
        Protocol::Udp => Ok(std::net::UdpSocket::bind((ip, 0))?.local_addr()?.port()),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl ProcessRuntime {
    /// Opens the runtime on `cfg.state_dir`, re-adopting workloads that still run.
    pub async fn new(cfg: ProcessConfig) -> Result<ProcessRuntime, RuntimeError> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(io(format!("cannot create {}", cfg.state_dir.display())))?;
        let (cgroups, limits_note) = match &cfg.cgroup_mount {
            None => (
                None,
                "memory and cpu limits not enforced: cgroups disabled by configuration".to_string(),
            ),
            Some(m) => match Cgroups::detect(m, &scope_of(&cfg.state_dir)) {
                Ok(c) => {
                    let note = c.describe();
                    (Some(c), note)
                }
                Err(why) => (None, why),
            },
        };
        let rt = ProcessRuntime {
            inner: Arc::new(Inner {
                cfg,
                cgroups,
                limits_note,
                entries: Mutex::default(),
                events: broadcast::channel(4096).0,
            }),
        };
        rt.restore()?;
        let weak = Arc::downgrade(&rt.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(inner) = weak.upgrade() else { break };
                rotate_logs(&inner);
            }
        });
        Ok(rt)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.state_dir.join(id)
    }

    fn restore(&self) -> Result<(), RuntimeError> {
        let dir = &self.inner.cfg.state_dir;
        let entries =
            std::fs::read_dir(dir).map_err(io(format!("cannot read {}", dir.display())))?;
        for e in entries.flatten() {
            let path = e.path().join("state.json");
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let mut record: Record = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "process runtime: skipping unreadable state file");
                    continue;
                }
            };
            let alive =
                record.exit.is_none() && start_ticks(record.pid) == Some(record.start_ticks);
            let (tx, rx) = watch::channel(None);
            if alive {
                tracing::info!(workload = %record.id, pid = record.pid, "process runtime: re-adopting");
                self.watch_adopted(record.id.clone(), record.pid, record.start_ticks, tx);
            } else {
                if record.exit.is_none() {
                    // Gone (or its pid now belongs to another process, which we leave alone).
                    record.exit = Some(ExitStatus {
                        at: Some(Timestamp::now()),
                        ..ExitStatus::default()
                    });
                }
                let _ = tx.send(record.exit.clone());
            }
            self.lock()
                .insert(record.id.clone(), Entry { record, exited: rx });
        }
        Ok(())
    }

    fn resolve(&self, program: &str) -> Result<PathBuf, RuntimeError> {
        if program.contains('/') {
            return Ok(PathBuf::from(program));
        }
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<PathBuf> = self
            .inner
            .cfg
            .search_path
            .iter()
            .cloned()
            .chain(std::env::split_paths(&path_var))
            .collect();
        dirs.iter()
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                RuntimeError::StartFailed(format!(
                    "command {program:?} not found in {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ))
            })
    }

    /// Records an exit: persists it, wakes stoppers and tells subscribers.
    fn finish(
        inner: &Inner,
        id: &str,
        pid: u32,
        mut status: ExitStatus,
        tx: &watch::Sender<Option<ExitStatus>>,
    ) {
        if let Some(cg) = &inner.cgroups {
            if status.signal == Some(9) && cg.oom_kills(id) > 0 {
                status.oom_killed = true;
            }
        }
        status.at = Some(Timestamp::now());
        {
            let mut g = inner.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = g.get_mut(id).filter(|e| e.record.pid == pid) {
                e.record.exit = Some(status.clone());
                let path = inner.cfg.state_dir.join(id).join("state.json");
                if let Ok(bytes) = serde_json::to_vec_pretty(&e.record) {
                    let _ = write_atomic(&path, &bytes);
                }
            } else {
                return;
            }
        }
        let _ = tx.send(Some(status.clone()));
        let _ = inner.events.send(RuntimeEvent::Exited {
            id: id.to_string(),
            status,
        });
    }

    fn watch_adopted(
        &self,
        id: String,
        pid: u32,
        ticks: u64,
        tx: watch::Sender<Option<ExitStatus>>,
    ) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let pidfd = Pid::from_raw(pid as i32).and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            });
            // The pidfd is an OwnedFd this task alone holds, so the I/O-safety concern behind
            // the deprecation (a descriptor closed elsewhere while registered) cannot arise.
            #[allow(deprecated)]
            let afd = pidfd.and_then(|fd| tokio::io::unix::AsyncFd::new(fd).ok());
            match afd {
                Some(afd) => {
                    let _ = afd.readable().await;
                }
                None => {
                    while start_ticks(pid) == Some(ticks) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            ProcessRuntime::finish(&inner, &id, pid, ExitStatus::default(), &tx);
        });
    }

    /// Sends `sig` to every process of the workload: its process group, and its cgroup.
    fn signal_all(&self, id: &str, pid: u32, sig: Signal) {
        if let Some(p) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process_group(p, sig);
        }
        if let Some(cg) = &self.inner.cgroups {
            for other in cg.pids(id) {
                if let Some(p) = Pid::from_raw(other as i32) {
                    let _ = rustix::process::kill_process(p, sig);
                }
            }
        }
    }

    /// Whether any process of the workload's group (or cgroup) remains.
    fn group_alive(&self, id: &str, pid: u32) -> bool {
        let in_group = Pid::from_raw(pid as i32)
            .is_some_and(|p| rustix::process::test_kill_process_group(p).is_ok());
        in_group
            || self
                .inner
                .cgroups
                .as_ref()
                .is_some_and(|cg| !cg.pids(id).is_empty())
    }
}

fn rotate_logs(inner: &Inner) {
    let ids: Vec<String> = inner
        .entries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    for id in ids {
        let log = inner.cfg.state_dir.join(&id).join("output.log");
        let Ok(meta) = std::fs::metadata(&log) else {
            continue;
        };
        if meta.len() <= inner.cfg.log_max_bytes {
            continue;
        }
        for i in (1..inner.cfg.log_keep).rev() {
            let _ = std::fs::rename(
                log.with_extension(format!("log.{i}")),
                log.with_extension(format!("log.{}", i + 1)),
            );
        }
        if inner.cfg.log_keep > 0 {
            let _ = std::fs::copy(&log, log.with_extension("log.1"));
        }
        // The workload writes with O_APPEND, so after truncation it continues at the new end.
        if let Ok(f) = OpenOptions::new().write(true).open(&log) {
            let _ = f.set_len(0);
        }
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "process".into(),
            limits_enforced: self.inner.cgroups.is_some(),
            limits_note: self.inner.limits_note.clone(),
        }
    }

    fn supports(&self, template: &Template) -> bool {
        template.image.is_none() && !template.command.is_empty()
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<Workload, RuntimeError> {
        let t = &spec.template;
        if !self.supports(t) {
            return Err(RuntimeError::Unsupported(
                "the process runtime runs a command; this template names an image".into(),
            ));
        }
        if self
            .lock()
            .get(&spec.id)
            .is_some_and(|e| e.exited.borrow().is_none())
        {
            return Err(RuntimeError::AlreadyRunning(spec.id.clone()));
        }
        let program = self.resolve(&t.command[0])?;
        let dir = self.dir(&spec.id);
        let work = match &t.working_dir {
            Some(w) => PathBuf::from(w),
            None => dir.join("work"),
        };
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        if t.working_dir.is_none() {
            std::fs::create_dir_all(&work)
                .map_err(io(format!("cannot create {}", work.display())))?;
        } else if !work.is_dir() {
            return Err(RuntimeError::StartFailed(format!(
                "working directory {} does not exist",
                work.display()
            )));
        }
        let host_ip = self.inner.cfg.host_ip.clone();
        let mut ports = Vec::new();
        for p in &t.ports {
            let port = match p.port {
                Some(n) => n,
                None => free_port(&host_ip, p.protocol)
                    .map_err(io(format!("cannot find a free port on {host_ip}")))?,
            };
            ports.push(BoundPort {
                name: p.name.clone(),
                port,
            });
        }
        let log_path = dir.join("output.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("cannot open {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io("cannot duplicate the log file"))?;

        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&t.command[1..])
            .args(&t.args)
            .current_dir(&work)
            .env_clear();
        for key in ["PATH", "HOME", "LANG", "TZ", "USER"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        for e in &spec.extra_env {
            cmd.env(&e.name, &e.value);
        }
        if let Some(first) = ports.first() {
            cmd.env("PORT", first.port.to_string());
        }
        for p in &ports {
            cmd.env(
                format!(
                    "ORCH_PORT_{}",
                    p.name.to_ascii_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            );
        }
        for e in &t.env {
            cmd.env(&e.name, &e.value);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cg) = &self.inner.cgroups {
            cg.create(
                &spec.id,
                t.resources.cpu.map(|c| c.0),
                t.resources.memory.map(|m| m.0),
            )
            .map_err(io(format!("cannot create the cgroup of {}", spec.id)))?;
        }
        let spawned = cmd.spawn();
        if spawned.is_err() {
            if let Some(cg) = &self.inner.cgroups {
                cg.remove(&spec.id);
            }
        }
        let mut child = spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                RuntimeError::StartFailed(format!("{}: {e}", program.display()))
            }
            _ if e.raw_os_error() == Some(8) => {
                RuntimeError::StartFailed(format!("{}: {e}", program.display()))
            }
            _ => RuntimeError::Io {
                context: format!("cannot start {}", program.display()),
                source: e,
            },
        })?;
        let pid = child.id().unwrap_or(0);
        // The process runs a few instructions before it joins its cgroup (there is no
        // CLONE_INTO_CGROUP without cgroup v2 and unsafe code); it cannot fork in that window
        // unless the program itself does so immediately.
        if let Some(cg) = &self.inner.cgroups {
            if let Err(e) = cg.add(&spec.id, pid) {
                tracing::warn!(workload = %spec.id, error = %e, "process runtime: cannot apply limits");
            }
        }
        let record = Record {
            id: spec.id.clone(),
            replica_uid: spec.replica_uid.clone(),
            template_hash: spec.template_hash.clone(),
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            ports: ports.clone(),
            host_ip: host_ip.clone(),
            started_at: Timestamp::now(),
            exit: None,
        };
        let bytes =
            serde_json::to_vec_pretty(&record).map_err(|e| RuntimeError::Other(Box::new(e)))?;
        write_atomic(&dir.join("state.json"), &bytes).map_err(io(format!(
            "cannot write {}",
            dir.join("state.json").display()
        )))?;
        let (tx, rx) = watch::channel(None);
        self.lock().insert(
            spec.id.clone(),
            Entry {
                record: record.clone(),
                exited: rx,
            },
        );
        let inner = self.inner.clone();
        let id = spec.id.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitStatus {
                        code: s.code(),
                        signal: s.signal(),
                        ..ExitStatus::default()
                    }
                }
                Err(_) => ExitStatus::default(),
            };
            ProcessRuntime::finish(&inner, &id, pid, status, &tx);
        });
        Ok(Workload {
            id: spec.id.clone(),
            replica_uid: record.replica_uid,
            template_hash: record.template_hash,
            runtime_id: format!("pid {pid}"),
            state: WorkloadState::Running,
            host_ip,
            ports,
            started_at: record.started_at,
        })
    }

    async fn stop(
        &self,
        id: &str,
        signal: &str,
        grace: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let (pid, mut exited) = {
            let g = self.lock();
            let e = g.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            (e.record.pid, e.exited.clone())
        };
        let sig = signal_number(signal)
            .and_then(Signal::from_named_raw)
            .unwrap_or(Signal::TERM);
        if exited.borrow().is_none() {
            self.signal_all(id, pid, sig);
            if tokio::time::timeout(grace, exited.wait_for(Option::is_some))
                .await
                .is_err()
            {
                self.signal_all(id, pid, Signal::KILL);
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), exited.wait_for(Option::is_some))
                        .await;
            }
        }
        // Whatever is left of the group (children that outlived the leader) goes too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.group_alive(id, pid) && tokio::time::Instant::now() < deadline {
            self.signal_all(id, pid, Signal::KILL);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = exited.borrow().clone().unwrap_or_default();
        Ok(status)
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let running = {
            let g = self.lock();
            let e = g.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            let running = e.exited.borrow().is_none();
            running
        };
        if running {
            self.stop(id, "SIGKILL", Duration::ZERO).await?;
        }
        self.lock().remove(id);
        if let Some(cg) = &self.inner.cgroups {
            cg.remove(id);
        }
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::Io {
                context: format!("cannot remove {}", dir.display()),
                source: e,
            }),
        }
    }

    async fn list(&self) -> Result<Vec<Workload>, RuntimeError> {
        let g = self.lock();
        Ok(g.values()
            .map(|e| Workload {
                id: e.record.id.clone(),
                replica_uid: e.record.replica_uid.clone(),
                template_hash: e.record.template_hash.clone(),
                runtime_id: format!("pid {}", e.record.pid),
                state: match e.exited.borrow().clone() {
                    None => WorkloadState::Running,
                    Some(s) => WorkloadState::Exited(s),
                },
                host_ip: e.record.host_ip.clone(),
                ports: e.record.ports.clone(),
                started_at: e.record.started_at,
            })
            .collect())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        if !self.lock().contains_key(id) {
            return Err(RuntimeError::NotFound(id.into()));
        }
        let path = self.dir(id).join("output.log");
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let offset = opts.tail_bytes.map(|t| len.saturating_sub(t)).unwrap_or(0);
        let me = self.clone();
        let id = id.to_string();
        let stream = futures::stream::unfold((offset, false), move |(mut offset, done)| {
            let (me, id, path) = (me.clone(), id.clone(), path.clone());
            async move {
                if done {
                    return None;
                }
                loop {
                    let len = match std::fs::metadata(&path) {
                        Ok(m) => m.len(),
                        Err(_) => return None,
                    };
                    if len < offset {
                        offset = 0; // rotated
                    }
                    if len > offset {
                        let chunk = read_at(&path, offset, (len - offset).min(64 * 1024));
                        return Some(match chunk {
                            Ok(bytes) => {
                                offset += bytes.len() as u64;
                                (Ok(bytes), (offset, false))
                            }
                            Err(e) => (
                                Err(RuntimeError::Io {
                                    context: format!("cannot read {}", path.display()),
                                    source: e,
                                }),
                                (offset, true),
                            ),
                        });
                    }
                    if !opts.follow || !me.lock().contains_key(&id) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Ok(stream.boxed())
    }
}

fn read_at(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}
