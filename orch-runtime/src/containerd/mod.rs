//! containerd, driven over its gRPC socket (feature `containerd`): [`LocalContainerd`] starts a
//! containerd of its own for tests and benchmarks, and [`Containerd`] creates, starts, waits
//! for, signals and deletes containers in one containerd namespace, with OCI runtime specs
//! built with `oci-spec`.
//!
//! This is the groundwork of the containerd runtime: containers run from a root filesystem
//! directory (bind-mounted as the container's root). Images (pull, content store, snapshots)
//! and the [`Runtime`](orch_core::runtime::Runtime) implementation build on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types::Mount;
mod image;
pub mod layout;
pub mod registry;
mod runtime;
pub mod testing;
pub use image::{chain_ids, Blob, ImageLayer, ImageParts, UnpackedImage};
pub use runtime::{ContainerdConfig, ContainerdRuntime, ImageRunConfig};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};

/// The runtime containerd starts containers with (runc through the v2 shim).
pub const RUNC_V2: &str = "io.containerd.runc.v2";

/// The type URL containerd expects for an OCI runtime spec.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// How long containerd may take to start answering.
const START: Duration = Duration::from_secs(20);

/// A failed containerd call: what was asked, and what containerd said.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket could not be reached.
    #[error("cannot connect to containerd at {socket}: {message}")]
    Connect {
        /// The socket path.
        socket: String,
        /// Why.
        message: String,
    },
    /// containerd answered with an error.
    #[error("containerd {call} {id}: {message}")]
    Call {
        /// The call (`create container`, `start task`, ...).
        call: &'static str,
        /// The container id (may be empty).
        id: String,
        /// gRPC status code.
        code: Code,
        /// containerd's message.
        message: String,
    },
    /// The container's spec could not be built.
    #[error("container {id}: invalid spec: {message}")]
    Spec {
        /// The container id.
        id: String,
        /// Why.
        message: String,
    },
}

impl ContainerdError {
    /// Whether the object asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ContainerdError::Call {
                code: Code::NotFound,
                ..
            }
        )
    }
}

fn call_error(
    call: &'static str,
    id: &str,
) -> impl FnOnce(containerd_client::tonic::Status) -> ContainerdError {
    let id = id.to_string();
    move |s| ContainerdError::Call {
        call,
        id,
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// A container's root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// A directory on the host, bind-mounted as `/`.
    Dir(PathBuf),
    /// A writable snapshot (named after the container) on top of an unpacked image's layers.
    Image {
        /// The image's name (recorded on the container).
        name: String,
        /// The snapshotter (`overlayfs`, `native`).
        snapshotter: String,
        /// The chain id of the image's top layer ([`UnpackedImage::chain_id`]).
        chain_id: String,
    },
}

impl Default for Root {
    fn default() -> Self {
        Root::Dir(PathBuf::new())
    }
}

/// What to run in one container.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// Container (and task) id, unique in the namespace.
    pub id: String,
    /// Where the root filesystem comes from.
    pub root: Root,
    /// Command and arguments.
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container (default `/`).
    pub cwd: Option<String>,
    /// Where the container's stdout goes (a file on the host, appended to).
    pub stdout: PathBuf,
    /// Where its stderr goes.
    pub stderr: PathBuf,
    /// containerd labels on the container (orch marks its replicas with them).
    pub labels: HashMap<String, String>,
    /// Mount the root filesystem read-only.
    pub read_only_root: bool,
    /// Share the host's network namespace (replicas get host ports, as processes do).
    pub host_network: bool,
    /// Join this network namespace (a bind-mounted nsfs file such as `/run/netns/NAME`,
    /// visible in containerd's mount namespace) instead of getting a new, empty one. Not
    /// together with `host_network`.
    pub netns: Option<PathBuf>,
    /// The container's hostname (its id, cut to 63 characters, when `None`).
    pub hostname: Option<String>,
    /// Run as this uid and gid (root when `None`).
    pub user: Option<(u32, u32)>,
    /// Capabilities added to the default set ([`DEFAULT_CAPABILITIES`], Docker's and
    /// Kubernetes'): names without `CAP_`, or `ALL`.
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it (`ALL`: every one).
    pub cap_drop: Vec<String>,
    /// CPU limit in millicores (a CFS quota).
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// The container's cgroup (runc's default when `None`).
    pub cgroups_path: Option<String>,
    /// Host files or directories bind-mounted into the container, after runc's defaults.
    pub mounts: Vec<BindMount>,
    /// Empty tmpfs directories at these paths.
    pub tmpfs: Vec<String>,
}

/// A host path bind-mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// The host path.
    pub source: PathBuf,
    /// Where it appears in the container (absolute).
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl ContainerSpec {
    /// The OCI runtime spec for this container: runc's defaults (own pid, ipc, uts and mount
    /// namespaces, /proc, /dev, /sys, masked paths) with this process and root, and the host's
    /// network namespace when `host_network` is set, or the namespace `netns` names.
    pub fn oci_spec(&self) -> Result<Spec, ContainerdError> {
        let bad = |e: oci_spec::OciSpecError| ContainerdError::Spec {
            id: self.id.clone(),
            message: e.to_string(),
        };
        let refuse = |message: String| ContainerdError::Spec {
            id: self.id.clone(),
            message,
        };
        if self.args.is_empty() {
            return Err(refuse("no command: args is empty".into()));
        }
        if let Some(netns) = &self.netns {
            if self.host_network {
                return Err(refuse(format!(
                    "host_network and netns {} exclude each other: set one",
                    netns.display()
                )));
            }
            if !netns.is_absolute() {
                return Err(refuse(format!(
                    "netns {} is not an absolute path",
                    netns.display()
                )));
            }
        }
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(refuse(format!(
                    "hostname {h:?} is not a hostname: 1 to 63 letters, digits, '-' and '.', starting and ending with a letter or digit"
                )));
            }
        }
        let mut env =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
        env.extend(self.env.iter().cloned());
        let mut process = ProcessBuilder::default()
            .args(self.args.clone())
            .env(env)
            .cwd(self.cwd.clone().unwrap_or_else(|| "/".into()))
            .build()
            .map_err(bad)?;
        let caps = capability_set(&self.cap_add, &self.cap_drop).map_err(refuse)?;
        process.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(Capabilities::new())
                .ambient(Capabilities::new())
                .build()
                .map_err(bad)?,
        ));
        if let Some((uid, gid)) = self.user {
            process.set_user(
                UserBuilder::default()
                    .uid(uid)
                    .gid(gid)
                    .build()
                    .map_err(bad)?,
            );
        }
        let root = RootBuilder::default()
            .path("rootfs")
            .readonly(self.read_only_root)
            .build()
            .map_err(bad)?;
        let mut spec = Spec::default();
        spec.set_process(Some(process));
        spec.set_root(Some(root));
        spec.set_hostname(Some(match &self.hostname {
            Some(h) => h.clone(),
            None => self.id.chars().take(63).collect(),
        }));
        if !self.mounts.is_empty() || !self.tmpfs.is_empty() {
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            for path in &self.tmpfs {
                mounts.push(
                    MountBuilder::default()
                        .destination(path)
                        .typ("tmpfs")
                        .source("tmpfs")
                        .options(vec![
                            "nosuid".to_string(),
                            "nodev".to_string(),
                            "mode=1777".to_string(),
                        ])
                        .build()
                        .map_err(bad)?,
                );
            }
            for m in &self.mounts {
                let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
                options.push(if m.read_only { "ro" } else { "rw" }.into());
                mounts.push(
                    MountBuilder::default()
                        .destination(&m.destination)
                        .typ("bind")
                        .source(&m.source)
                        .options(options)
                        .build()
                        .map_err(bad)?,
                );
            }
            spec.set_mounts(Some(mounts));
        }
        if let Some(linux) = spec.linux_mut() {
            let mut resources = linux.resources().clone().unwrap_or_default();
            if let Some(bytes) = self.memory_bytes {
                resources.set_memory(Some(
                    LinuxMemoryBuilder::default()
                        .limit(bytes as i64)
                        .build()
                        .map_err(bad)?,
                ));
            }
            if let Some(millis) = self.cpu_millis {
                const PERIOD: u64 = 100_000;
                resources.set_cpu(Some(
                    LinuxCpuBuilder::default()
                        .period(PERIOD)
                        .quota((millis * PERIOD / 1000).max(1000) as i64)
                        .build()
                        .map_err(bad)?,
                ));
            }
            linux.set_resources(Some(resources));
            if let Some(path) = &self.cgroups_path {
                linux.set_cgroups_path(Some(path.into()));
            }
            if self.host_network || self.netns.is_some() {
                // The host's network namespace (none of its own), or the one `netns` names.
                let mut namespaces: Vec<LinuxNamespace> = linux
                    .namespaces()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect();
                if let Some(netns) = &self.netns {
                    namespaces.push(
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Network)
                            .path(netns.clone())
                            .build()
                            .map_err(bad)?,
                    );
                }
                linux.set_namespaces(Some(namespaces));
            }
        }
        Ok(spec)
    }
}

/// The capabilities a container's processes get unless its spec adds or drops some: Docker's
/// default set, which Kubernetes' container runtimes use too.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// [`DEFAULT_CAPABILITIES`] with `add` and `drop` applied as Docker does (`add: [ALL]` starts
/// from every capability, `drop: [ALL]` from none; then the others are dropped and added).
fn capability_set(add: &[String], drop: &[String]) -> Result<Capabilities, String> {
    let parse = |n: &str| -> Result<Option<Capability>, String> {
        let up = n.trim().to_ascii_uppercase();
        let bare = up.strip_prefix("CAP_").unwrap_or(&up);
        if bare == "ALL" {
            return Ok(None);
        }
        bare.parse::<Capability>()
            .map(Some)
            .map_err(|_| format!("capability {n:?} is not a Linux capability"))
    };
    let all = |list: &[String]| list.iter().any(|n| n.trim().eq_ignore_ascii_case("ALL"));
    let mut set: Capabilities = if all(add) {
        orch_core::model::validate::CAPABILITY_NAMES
            .iter()
            .filter_map(|n| n.parse::<Capability>().ok())
            .collect()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter_map(|n| n.parse::<Capability>().ok())
            .collect()
    };
    if all(drop) {
        set.clear();
    }
    for n in drop {
        if let Some(c) = parse(n)? {
            set.remove(&c);
        }
    }
    for n in add {
        if let Some(c) = parse(n)? {
            set.insert(c);
        }
    }
    Ok(set)
}

/// Whether `h` can be a container's hostname: 1 to 63 letters, digits, `-` and `.`, starting
/// and ending with a letter or digit (what the kernel takes and resolvers look up).
fn valid_hostname(h: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && edge(h.bytes().next())
        && edge(h.bytes().last())
}

/// How a container's task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskExit {
    /// The exit status containerd reports (128 + signal for a process killed by a signal).
    pub status: u32,
}

impl TaskExit {
    /// The signal that ended it, if it was killed.
    pub fn signal(&self) -> Option<i32> {
        (self.status > 128 && self.status < 128 + 65).then(|| (self.status - 128) as i32)
    }
}

/// A task's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskStatus {
    /// Its main process.
    pub pid: u32,
    /// Whether it has not exited.
    pub running: bool,
    /// Its exit status, once stopped.
    pub exit_status: u32,
}

/// A client of one containerd namespace.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

impl Containerd {
    /// Connects to the containerd socket at `socket`; every call works in `namespace`.
    pub async fn connect(
        socket: impl AsRef<Path>,
        namespace: &str,
    ) -> Result<Containerd, ContainerdError> {
        let socket = socket.as_ref();
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|e| ContainerdError::Connect {
                    socket: socket.display().to_string(),
                    message: e.to_string(),
                })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
        })
    }

    /// A request in this client's namespace.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        r
    }

    /// The namespace this client works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The snapshotters containerd loaded without error.
    pub async fn snapshotters(&self) -> Result<Vec<String>, ContainerdError> {
        use containerd_client::services::v1::introspection_client::IntrospectionClient;
        use containerd_client::services::v1::PluginsRequest;
        let r = IntrospectionClient::new(self.channel.clone())
            .plugins(self.req(PluginsRequest {
                filters: vec!["type==io.containerd.snapshotter.v1".into()],
            }))
            .await
            .map_err(call_error("list plugins", ""))?;
        Ok(r.into_inner()
            .plugins
            .into_iter()
            .filter(|p| p.init_err.is_none())
            .map(|p| p.id)
            .collect())
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, ContainerdError> {
        let v = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(call_error("version", ""))?;
        Ok(v.into_inner().version)
    }

    /// Creates the container and its task, and starts it; returns the task's pid. On failure
    /// nothing is left behind.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<u32, ContainerdError> {
        let oci = spec.oci_spec()?;
        let value = serde_json::to_vec(&oci).map_err(|e| ContainerdError::Spec {
            id: spec.id.clone(),
            message: e.to_string(),
        })?;
        let (image, snapshotter, snapshot_key) = match &spec.root {
            Root::Dir(_) => (String::new(), String::new(), String::new()),
            Root::Image {
                name, snapshotter, ..
            } => (name.clone(), snapshotter.clone(), spec.id.clone()),
        };
        let container = Container {
            id: spec.id.clone(),
            labels: spec.labels.clone(),
            image,
            snapshotter,
            snapshot_key,
            runtime: Some(ContainerRuntime {
                name: RUNC_V2.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value,
            }),
            ..Container::default()
        };
        let req = CreateContainerRequest {
            container: Some(container),
        };
        ContainersClient::new(self.channel.clone())
            .create(self.req(req))
            .await
            .map_err(call_error("create container", &spec.id))?;
        match self.create_and_start(spec).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                let _ = self.delete(&spec.id).await;
                Err(e)
            }
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<u32, ContainerdError> {
        let uri = |p: &Path| format!("file://{}", p.display());
        let rootfs = match &spec.root {
            Root::Dir(dir) => vec![Mount {
                r#type: "bind".into(),
                source: dir.display().to_string(),
                target: String::new(),
                options: vec![
                    "rbind".into(),
                    if spec.read_only_root { "ro" } else { "rw" }.into(),
                ],
            }],
            Root::Image {
                snapshotter,
                chain_id,
                ..
            } => {
                self.prepare_snapshot(snapshotter, &spec.id, chain_id)
                    .await?
            }
        };
        let req = CreateTaskRequest {
            container_id: spec.id.clone(),
            rootfs,
            stdout: uri(&spec.stdout),
            stderr: uri(&spec.stderr),
            ..CreateTaskRequest::default()
        };
        let mut tasks = TasksClient::new(self.channel.clone());
        let created = tasks
            .create(self.req(req))
            .await
            .map_err(call_error("create task", &spec.id))?
            .into_inner();
        let req = StartRequest {
            container_id: spec.id.clone(),
            exec_id: String::new(),
        };
        tasks
            .start(self.req(req))
            .await
            .map_err(call_error("start task", &spec.id))?;
        Ok(created.pid)
    }

    /// Waits until the container's task exits.
    pub async fn wait(&self, id: &str) -> Result<TaskExit, ContainerdError> {
        let req = WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let r = TasksClient::new(self.channel.clone())
            .wait(self.req(req))
            .await
            .map_err(call_error("wait task", id))?
            .into_inner();
        Ok(TaskExit {
            status: r.exit_status,
        })
    }

    /// The task's state, if the container has one.
    pub async fn task_status(&self, id: &str) -> Result<Option<TaskStatus>, ContainerdError> {
        let req = GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        match TasksClient::new(self.channel.clone())
            .get(self.req(req))
            .await
        {
            Ok(r) => Ok(r.into_inner().process.map(|p| TaskStatus {
                pid: p.pid,
                // containerd's task states: 1 created, 2 running, 3 stopped, 4 paused, 5 pausing.
                running: matches!(p.status, 1 | 2 | 4 | 5),
                exit_status: p.exit_status,
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(call_error("get task", id)(s)),
        }
    }

    /// Runs `argv` in the running container `id` with its main process's environment, working
    /// directory and user; output goes to the FIFOs `stdout` and `stderr` (the shim writes
    /// both streams of a `file://` target into one file, so separate streams need FIFOs; the
    /// caller reads them). Killed (SIGKILL) after `timeout`; returns how it ended and whether
    /// it timed out.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        stdout: &Path,
        stderr: &Path,
        timeout: Duration,
    ) -> Result<(TaskExit, bool), ContainerdError> {
        let container = ContainersClient::new(self.channel.clone())
            .get(self.req(containerd_client::services::v1::GetContainerRequest { id: id.into() }))
            .await
            .map_err(call_error("get container", id))?
            .into_inner()
            .container
            .ok_or_else(|| ContainerdError::Spec {
                id: id.into(),
                message: "containerd returned no container".into(),
            })?;
        let spec: Spec = container
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .ok_or_else(|| ContainerdError::Spec {
                id: id.into(),
                message: "the container has no readable OCI spec".into(),
            })?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(argv.to_vec()));
        process.set_terminal(Some(false));
        let value = serde_json::to_vec(&process).map_err(|e| ContainerdError::Spec {
            id: id.into(),
            message: e.to_string(),
        })?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let exec_id = format!(
            "exec-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .exec(
                self.req(containerd_client::services::v1::ExecProcessRequest {
                    container_id: id.into(),
                    stdin: String::new(),
                    stdout: stdout.display().to_string(),
                    stderr: stderr.display().to_string(),
                    terminal: false,
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process"
                            .into(),
                        value,
                    }),
                    exec_id: exec_id.clone(),
                }),
            )
            .await
            .map_err(call_error("exec", id))?;
        let cleanup = |tasks: TasksClient<Channel>, exec_id: String| {
            let req = self.req(containerd_client::services::v1::DeleteProcessRequest {
                container_id: id.into(),
                exec_id,
            });
            async move {
                let mut tasks = tasks;
                let _ = tasks.delete_process(req).await;
            }
        };
        if let Err(s) = tasks
            .start(self.req(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            }))
            .await
        {
            cleanup(tasks, exec_id).await;
            return Err(call_error("exec start", id)(s));
        }
        let mut waiter = tasks.clone();
        let wait = waiter.wait(self.req(WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.clone(),
        }));
        let (exit, timed_out) = match tokio::time::timeout(timeout, wait).await {
            Ok(r) => (r.map_err(call_error("exec wait", id))?.into_inner(), false),
            Err(_) => {
                let _ = tasks
                    .kill(self.req(KillRequest {
                        container_id: id.into(),
                        exec_id: exec_id.clone(),
                        signal: 9,
                        all: false,
                    }))
                    .await;
                let r = tasks
                    .clone()
                    .wait(self.req(WaitRequest {
                        container_id: id.into(),
                        exec_id: exec_id.clone(),
                    }))
                    .await
                    .map_err(call_error("exec wait", id))?;
                (r.into_inner(), true)
            }
        };
        cleanup(tasks, exec_id).await;
        Ok((
            TaskExit {
                status: exit.exit_status,
            },
            timed_out,
        ))
    }

    /// Sends `signal` to the container's main process.
    pub async fn kill(&self, id: &str, signal: u32) -> Result<(), ContainerdError> {
        let req = KillRequest {
            container_id: id.into(),
            exec_id: String::new(),
            signal,
            all: false,
        };
        TasksClient::new(self.channel.clone())
            .kill(self.req(req))
            .await
            .map_err(call_error("kill task", id))?;
        Ok(())
    }

    /// Stops the task — `SIGTERM`, then `SIGKILL` after `grace` — and returns how it ended.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<TaskExit, ContainerdError> {
        self.stop_with(id, 15, grace).await
    }

    /// Stops the task — `signal`, then `SIGKILL` after `grace` — and returns how it ended.
    pub async fn stop_with(
        &self,
        id: &str,
        signal: u32,
        grace: Duration,
    ) -> Result<TaskExit, ContainerdError> {
        let waiter = {
            let this = self.clone();
            let id = id.to_string();
            tokio::spawn(async move { this.wait(&id).await })
        };
        // Let the wait register before signalling, so the exit cannot be missed.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.kill(id, signal).await?;
        let mut waiter = waiter;
        match tokio::time::timeout(grace, &mut waiter).await {
            Ok(r) => r.map_err(|e| ContainerdError::Spec {
                id: id.into(),
                message: e.to_string(),
            })?,
            Err(_) => {
                self.kill(id, 9).await?;
                waiter.await.map_err(|e| ContainerdError::Spec {
                    id: id.into(),
                    message: e.to_string(),
                })?
            }
        }
    }

    /// Deletes the container's task (it must have exited) and the container. Missing ones are
    /// not an error.
    pub async fn delete(&self, id: &str) -> Result<(), ContainerdError> {
        let req = DeleteTaskRequest {
            container_id: id.into(),
        };
        match TasksClient::new(self.channel.clone())
            .delete(self.req(req))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(call_error("delete task", id)(s)),
        }
        let req = containerd_client::services::v1::GetContainerRequest { id: id.into() };
        let snapshot = match ContainersClient::new(self.channel.clone())
            .get(self.req(req))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .filter(|c| !c.snapshot_key.is_empty())
                .map(|c| (c.snapshotter, c.snapshot_key)),
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(call_error("get container", id)(s)),
        };
        let req = DeleteContainerRequest { id: id.into() };
        match ContainersClient::new(self.channel.clone())
            .delete(self.req(req))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(call_error("delete container", id)(s)),
        }
        if let Some((snapshotter, key)) = snapshot {
            self.remove_snapshot(&snapshotter, &key).await?;
        }
        Ok(())
    }

    /// Containers in the namespace: id and labels.
    pub async fn containers(
        &self,
    ) -> Result<Vec<(String, HashMap<String, String>)>, ContainerdError> {
        let req = ListContainersRequest { filters: vec![] };
        let r = ContainersClient::new(self.channel.clone())
            .list(self.req(req))
            .await
            .map_err(call_error("list containers", ""))?;
        Ok(r.into_inner()
            .containers
            .into_iter()
            .map(|c| (c.id, c.labels))
            .collect())
    }
}

/// A containerd of its own — root, state and socket in a temporary directory, the CRI plugin
/// off — for tests and benchmarks; stopped on drop together with the shims it started. Needs
/// `containerd` and `runc` (Debian `containerd runc`) and root.
pub struct LocalContainerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    disabled: Vec<String>,
}

impl std::fmt::Debug for LocalContainerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalContainerd")
            .field("socket", &self.socket())
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl LocalContainerd {
    /// Starts containerd and waits until it answers.
    pub async fn start() -> Result<LocalContainerd, String> {
        Self::start_without(&[]).await
    }

    /// Starts containerd with these plugins disabled too (`io.containerd.snapshotter.v1.overlayfs`
    /// to try the native fallback).
    pub async fn start_without(plugins: &[&str]) -> Result<LocalContainerd, String> {
        let dir = tempfile::Builder::new()
            .prefix("orch-ctd-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let mut c = LocalContainerd {
            child: None,
            dir,
            disabled: plugins.iter().map(|p| p.to_string()).collect(),
        };
        c.restart().await?;
        Ok(c)
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// A containerd namespace of this instance's own. runc keeps container state under
    /// `/run/containerd/runc/NAMESPACE` whichever containerd started it, so instances on one
    /// machine must not share namespace names; this one is removed on drop.
    pub fn namespace(&self) -> String {
        let dir = self
            .dir
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        format!(
            "orch-test-{}",
            dir.trim_start_matches("orch-ctd-").to_ascii_lowercase()
        )
    }

    /// A scratch directory next to containerd's, removed with it.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// (Re)starts containerd on the same root, state and socket, and waits until it answers.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop_daemon();
        let d = self.dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [{disabled}]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = self.socket().display(),
            disabled = ["io.containerd.grpc.v1.cri"]
                .iter()
                .map(|p| p.to_string())
                .chain(self.disabled.iter().cloned())
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        std::fs::create_dir_all(self.scratch()).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(d.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start containerd (Debian package `containerd`): {e}"))?;
        self.child = Some(child);
        let t = std::time::Instant::now();
        loop {
            if let Ok(c) = Containerd::connect(self.socket(), "orch").await {
                if c.version().await.is_ok() {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default();
                return Err(format!("containerd exited ({status}):\n{log}"));
            }
            if t.elapsed() > START {
                return Err(format!("containerd did not answer within {START:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops containerd (the shims and containers it started keep running, as in production).
    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the shims started for this containerd (found by its socket in their command
    /// line) and every process under them: the containers' processes are the shims' children.
    fn kill_shims(&self) {
        let sock = self.socket().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut parent: Vec<(i32, i32)> = Vec::new();
        let mut shims: Vec<i32> = Vec::new();
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: the command may hold spaces, so read after the `)`.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            {
                parent.push((pid, ppid));
            }
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("containerd-shim") && cmd.contains(&sock) {
                shims.push(pid);
            }
        }
        let mut doomed = shims.clone();
        let mut i = 0;
        while i < doomed.len() {
            let p = doomed[i];
            doomed.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        // Children first, so no shim is left to restart or reap-and-report them.
        for pid in doomed.iter().rev() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes an empty cgroup and its empty children (cgroup directories go with `rmdir`).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for LocalContainerd {
    fn drop(&mut self) {
        self.stop_daemon();
        self.kill_shims();
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(self.namespace()));
        // runc leaves the namespace's own cgroup (`/NAMESPACE`) in every hierarchy.
        let roots = std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for root in roots
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/sys/fs/cgroup")])
        {
            remove_cgroup_tree(&root.join(self.namespace()));
        }
        // Mounts left by runc or snapshotters (container roots) would keep the directory busy:
        // lazily unmount everything under it, deepest first.
        let dir = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount")
                .args(["-l", &m])
                .stderr(Stdio::null())
                .status();
        }
    }
}
