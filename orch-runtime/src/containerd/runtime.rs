//! [`ContainerdRuntime`]: the [`Runtime`] that runs replicas as containerd containers from
//! images already in containerd's image store (imported with [`Containerd::import`]).
//!
//! Each container carries labels naming its workload, replica uid, template hash, ports,
//! start time and (with a network of its own) its address and network namespace, so a new
//! runtime over the same containerd namespace re-adopts what runs: it neither duplicates nor
//! kills those containers.
//!
//! A container started with a [`WorkloadNetwork`](orch_core::runtime::WorkloadNetwork) joins
//! that network namespace (the node's [`Network`](orch_core::Network) made it): its fixed
//! ports are its own, its hostname is the replica's name and its `/etc/hosts` names it at
//! its address. Without one it shares the host's network, as a process does.
//!
//! Output goes to one file per workload in the state directory; exits are reported through
//! [`Runtime::events`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use futures::StreamExt;
use orch_core::model::object::{BoundPort, ExitStatus, PullPolicy, Template};
use orch_core::model::quantity::Timestamp;
use orch_core::runtime::{
    signal_number, ExecOutput, LogOptions, LogStream, MountSource, Runtime, RuntimeError,
    RuntimeEvent, RuntimeInfo, Workload, WorkloadSpec, WorkloadState, EXEC_OUTPUT_MAX,
};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use super::image::{chain_ids, oci_arch};
use super::{call_error, ContainerSpec, Containerd, ContainerdError, Root};

/// Label: the workload id (`namespace.name` of the replica).
pub const LABEL_WORKLOAD: &str = "orch.dev/workload";
/// Label: the replica uid.
pub const LABEL_REPLICA_UID: &str = "orch.dev/replica-uid";
/// Label: the template hash.
pub const LABEL_TEMPLATE_HASH: &str = "orch.dev/template-hash";
/// Label: start time, milliseconds since the epoch.
pub const LABEL_STARTED_AT: &str = "orch.dev/started-at";
/// Label: `name=port,...` of the bound ports.
pub const LABEL_PORTS: &str = "orch.dev/ports";
/// Label: the address the workload is reached at.
pub const LABEL_HOST_IP: &str = "orch.dev/host-ip";
/// Label: the workload's own address, when it runs in a network namespace of its own.
pub const LABEL_IP: &str = "orch.dev/ip";
/// Label: the network namespace it joined (a bind-mounted nsfs file).
pub const LABEL_NETNS: &str = "orch.dev/netns";

/// Configuration of a [`ContainerdRuntime`].
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace (`orch`).
    pub namespace: String,
    /// The snapshotter for containers' root filesystems (`overlayfs`; `native` where overlay
    /// mounts are not possible).
    pub snapshotter: String,
    /// Where the workloads' output files live.
    pub state_dir: PathBuf,
    /// The address workloads are reached at (and dynamic ports are picked on).
    pub host_ip: String,
    /// Credentials and insecure registries for pulling images.
    pub registry: super::registry::RegistryConfig,
}

impl ContainerdConfig {
    /// Namespace `orch`, snapshotter `overlayfs`, host ip `127.0.0.1`.
    pub fn new(socket: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> ContainerdConfig {
        ContainerdConfig {
            socket: socket.into(),
            namespace: "orch".into(),
            snapshotter: "overlayfs".into(),
            state_dir: state_dir.into(),
            host_ip: "127.0.0.1".into(),
            registry: super::registry::RegistryConfig::default(),
        }
    }
}

struct Entry {
    workload: Workload,
    waiter: Option<AbortHandle>,
}

struct Inner {
    client: Containerd,
    config: ContainerdConfig,
    workloads: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<RuntimeEvent>,
    puller: super::registry::Puller,
    /// Serialises pulls (one image is fetched once even when replicas start together).
    pulls: tokio::sync::Mutex<()>,
    /// One lock per workload: start, stop and remove of one workload never overlap, while
    /// different workloads start in parallel (as `ctr run` does).
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls under way: image → bytes received and size per blob.
    pulling: Arc<Mutex<HashMap<String, BlobProgress>>>,
    /// Starts under way: workload → the image it needs.
    starting: Mutex<HashMap<String, String>>,
    /// Image configs already read, by image name (dropped when the image is pulled again).
    configs: Mutex<HashMap<String, ImageRunConfig>>,
}

/// Runs replicas as containerd containers.
#[derive(Clone)]
pub struct ContainerdRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ContainerdRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdRuntime")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(e: ContainerdError) -> RuntimeError {
    match e {
        ContainerdError::Connect { .. } => RuntimeError::Unavailable(e.to_string()),
        ContainerdError::Call {
            code:
                containerd_client::tonic::Code::Unavailable
                | containerd_client::tonic::Code::DeadlineExceeded,
            ..
        } => RuntimeError::Unavailable(e.to_string()),
        other => RuntimeError::StartFailed(other.to_string()),
    }
}

/// What an image's config says about how to run it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`NAME=value`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// The chain id of the top layer.
    pub chain_id: String,
    /// The layers' digests, base first (to read `/etc/passwd` for a user name).
    pub layers: Vec<String>,
}

impl ImageRunConfig {
    /// Parses an OCI image config document.
    pub fn parse(config: &[u8]) -> Result<ImageRunConfig, String> {
        let v: Value = serde_json::from_slice(config).map_err(|e| format!("image config: {e}"))?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let c = &v["config"];
        let diff_ids = strings(&v["rootfs"]["diff_ids"]);
        let chain_id = chain_ids(&diff_ids)
            .pop()
            .ok_or("image config: rootfs.diff_ids is empty")?;
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
        Ok(ImageRunConfig {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: text(&c["WorkingDir"]),
            user: text(&c["User"]),
            chain_id,
            layers: Vec::new(),
        })
    }

    /// The command line, as Kubernetes combines it: the template's `command` replaces the
    /// entrypoint (and drops the image's `Cmd`), its `args` replace `Cmd`.
    pub fn argv(&self, t: &Template) -> Vec<String> {
        let mut argv = if t.command.is_empty() {
            self.entrypoint.clone()
        } else {
            t.command.clone()
        };
        if !t.args.is_empty() {
            argv.extend(t.args.iter().cloned());
        } else if t.command.is_empty() {
            argv.extend(self.cmd.iter().cloned());
        }
        argv
    }
}

/// Resolves an image's `User` (`name`, `uid`, `name:group`, `uid:gid`) with the image's
/// `/etc/passwd` and `/etc/group` (`None` when the image has none): a name must be found, a
/// number needs no entry (its group is then 0, or the user's primary group if listed).
fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries = |file: Option<&str>| -> Vec<Vec<String>> {
        file.unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| l.split(':').map(String::from).collect())
            .collect()
    };
    let users = entries(passwd);
    let user_entry = users.iter().find(|e| {
        e.first().map(String::as_str) == Some(u)
            || (u.parse::<u32>().is_ok() && e.get(2).map(String::as_str) == Some(u))
    });
    let uid = match (u.parse::<u32>(), user_entry) {
        (Ok(n), _) => n,
        (Err(_), Some(e)) => e.get(2).and_then(|n| n.parse().ok()).ok_or_else(|| {
            format!("image user {user:?}: its /etc/passwd line has no numeric uid")
        })?,
        (Err(_), None) => {
            return Err(format!(
                "image user {u:?} is not in the image's /etc/passwd{}",
                if passwd.is_none() {
                    " (the image has none)"
                } else {
                    ""
                }
            ))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entries(group)
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(g))
                .and_then(|e| e.get(2).and_then(|n| n.parse().ok()))
                .ok_or_else(|| format!("image group {g:?} is not in the image's /etc/group"))?,
        },
        None => user_entry
            .and_then(|e| e.get(3).and_then(|n| n.parse().ok()))
            .unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The text of `path` (`etc/passwd`) in the topmost of these layer blobs (gzip or plain tar)
/// that has it; `None` when none has it or the topmost one that mentions it deletes it.
fn file_in_layers(layers: &[Vec<u8>], path: &str) -> Option<String> {
    use std::io::Read;
    let whiteout = match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.wh.{name}"),
        None => format!(".wh.{path}"),
    };
    for bytes in layers.iter().rev() {
        let reader: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        let mut archive = tar::Archive::new(reader);
        let Ok(entries) = archive.entries() else {
            continue;
        };
        for entry in entries.flatten() {
            let mut entry = entry;
            let name = entry
                .path()
                .map(|p| p.to_string_lossy().trim_start_matches("./").to_string())
                .unwrap_or_default();
            if name == whiteout {
                return None;
            }
            if name == path {
                let mut text = String::new();
                entry.read_to_string(&mut text).ok()?;
                return Some(text);
            }
        }
    }
    None
}

impl ContainerdRuntime {
    /// Connects to containerd and re-adopts the containers of earlier runs in the namespace.
    pub async fn new(config: ContainerdConfig) -> Result<ContainerdRuntime, RuntimeError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| RuntimeError::Io {
            context: format!("cannot create {}", config.state_dir.display()),
            source,
        })?;
        let client = Containerd::connect(&config.socket, &config.namespace)
            .await
            .map_err(unavailable)?;
        client.version().await.map_err(unavailable)?;
        let mut config = config;
        let available = client.snapshotters().await.map_err(unavailable)?;
        if !available.contains(&config.snapshotter) {
            if config.snapshotter == "overlayfs" && available.iter().any(|s| s == "native") {
                tracing::warn!(
                    "containerd: the overlayfs snapshotter is not available here; using native (a full copy per container)"
                );
                config.snapshotter = "native".into();
            } else {
                return Err(RuntimeError::Unavailable(format!(
                    "containerd has no snapshotter {:?}; available: {}",
                    config.snapshotter,
                    available.join(", ")
                )));
            }
        }
        let puller = super::registry::Puller::new(config.registry.clone())
            .map_err(RuntimeError::Unavailable)?;
        let rt = ContainerdRuntime {
            inner: Arc::new(Inner {
                client,
                config,
                workloads: Mutex::new(BTreeMap::new()),
                events: broadcast::channel(1024).0,
                puller,
                pulls: tokio::sync::Mutex::new(()),
                ops: Mutex::new(HashMap::new()),
                configs: Mutex::new(HashMap::new()),
                pulling: Arc::default(),
                starting: Mutex::new(HashMap::new()),
            }),
        };
        rt.adopt().await?;
        Ok(rt)
    }

    /// The snapshotter in use (overlayfs falls back to native where containerd has no overlay).
    pub fn snapshotter(&self) -> &str {
        &self.inner.config.snapshotter
    }

    /// The client, for images and inspection.
    pub fn client(&self) -> &Containerd {
        &self.inner.client
    }

    /// The lock of one workload's start, stop and remove.
    async fn op_lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.inner.ops)
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// A temporary directory in the state directory, removed when dropped.
    fn scratch_dir(&self, prefix: &str) -> Result<tempfile::TempDir, RuntimeError> {
        let state = &self.inner.config.state_dir;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(state)
            .map_err(|source| RuntimeError::Io {
                context: format!("cannot create a temp dir in {}", state.display()),
                source,
            })
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.inner.config.state_dir.join(format!("{id}.log"))
    }

    /// Where a container's secret and config files are written (on tmpfs).
    fn tmpfs_dir(&self, id: &str) -> PathBuf {
        let state = &self.inner.config.state_dir;
        crate::mounts::tmpfs_root(&crate::mounts::tag_of(state), &state.join(".tmpfs")).join(id)
    }

    /// The resolv.conf bind-mounted into the container when the node runs a DNS server.
    fn resolv_conf_path(&self, id: &str) -> PathBuf {
        self.inner
            .config
            .state_dir
            .join(format!("{id}.resolv.conf"))
    }

    /// The hosts file bind-mounted into a container with a network of its own.
    fn hosts_path(&self, id: &str) -> PathBuf {
        self.inner.config.state_dir.join(format!("{id}.hosts"))
    }

    async fn adopt(&self) -> Result<(), RuntimeError> {
        let c = &self.inner.client;
        for (cid, labels) in c.containers().await.map_err(unavailable)? {
            let Some(id) = labels.get(LABEL_WORKLOAD).cloned() else {
                continue;
            };
            let ports = labels
                .get(LABEL_PORTS)
                .map(|s| {
                    s.split(',')
                        .filter_map(|p| p.split_once('='))
                        .filter_map(|(n, p)| {
                            Some(BoundPort {
                                name: n.into(),
                                port: p.parse().ok()?,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let task = c.task_status(&cid).await.map_err(unavailable)?;
            let state = match task {
                Some(t) if t.running => WorkloadState::Running,
                Some(t) => WorkloadState::Exited(exit_status(t.exit_status, false)),
                None => WorkloadState::Exited(ExitStatus {
                    code: None,
                    signal: None,
                    oom_killed: false,
                    at: Some(Timestamp::now()),
                }),
            };
            let running = state == WorkloadState::Running;
            let workload = Workload {
                id: id.clone(),
                replica_uid: labels.get(LABEL_REPLICA_UID).cloned().unwrap_or_default(),
                template_hash: labels.get(LABEL_TEMPLATE_HASH).cloned().unwrap_or_default(),
                runtime_id: match task {
                    Some(t) => format!("pid {}, container {cid}", t.pid),
                    None => format!("container {cid}"),
                },
                state,
                host_ip: labels.get(LABEL_HOST_IP).cloned().unwrap_or_default(),
                ip: labels.get(LABEL_IP).cloned(),
                ports,
                started_at: Timestamp(
                    labels
                        .get(LABEL_STARTED_AT)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                ),
            };
            lock(&self.inner.workloads).insert(
                id.clone(),
                Entry {
                    workload,
                    waiter: None,
                },
            );
            if running {
                self.watch_exit(&id);
            }
        }
        Ok(())
    }

    /// Waits for the workload's task to exit (again after containerd comes back), records
    /// how it ended and announces it.
    fn watch_exit(&self, id: &str) {
        let inner = self.inner.clone();
        let wid = id.to_string();
        let handle = tokio::spawn(async move {
            let exit = loop {
                match inner.client.wait(&wid).await {
                    Ok(e) => break e,
                    Err(e) if e.is_not_found() => return,
                    Err(e) => {
                        tracing::debug!(workload = %wid, error = %e, "containerd: wait failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            let oom = oom_killed(&inner.config.namespace, &wid);
            let status = exit_status(exit.status, oom);
            if let Some(e) = lock(&inner.workloads).get_mut(&wid) {
                if e.workload.state == WorkloadState::Running {
                    e.workload.state = WorkloadState::Exited(status.clone());
                } else {
                    return;
                }
            }
            let _ = inner.events.send(RuntimeEvent::Exited { id: wid, status });
        });
        if let Some(e) = lock(&self.inner.workloads).get_mut(id) {
            if let Some(old) = e.waiter.replace(handle.abort_handle()) {
                old.abort();
            }
        }
    }

    /// The uid and gid an image's `User` names (read from the image's own /etc/passwd and
    /// /etc/group when it is a name; the layers are read only then).
    async fn resolve_user(
        &self,
        image: &str,
        cfg: &ImageRunConfig,
        user: &str,
    ) -> Result<(u32, u32), RuntimeError> {
        let numeric = user
            .split(':')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        let (passwd, group) = if numeric {
            (None, None)
        } else {
            let mut blobs = Vec::with_capacity(cfg.layers.len());
            for d in &cfg.layers {
                blobs.push(self.read_blob(d).await?);
            }
            tokio::task::spawn_blocking(move || {
                (
                    file_in_layers(&blobs, "etc/passwd"),
                    file_in_layers(&blobs, "etc/group"),
                )
            })
            .await
            .map_err(|e| RuntimeError::Other(Box::new(e)))?
        };
        resolve_user(user, passwd.as_deref(), group.as_deref())
            .map_err(|e| RuntimeError::StartFailed(format!("image {image}: {e}")))
    }

    /// Pulls `image` from its registry and imports it: always when `always` (to follow a
    /// moving tag; cached blobs are not fetched again), else only when containerd lacks it.
    /// Blobs are cached under the state directory.
    pub async fn pull_image(&self, image: &str, always: bool) -> Result<(), RuntimeError> {
        let _one_at_a_time = self.inner.pulls.lock().await;
        if !always && self.image_config(image).await.is_ok() {
            return Ok(());
        }
        lock(&self.inner.configs).remove(image);
        let cache = self.inner.config.state_dir.join("images");
        let started = std::time::Instant::now();
        let name = image.to_string();
        lock(&self.inner.pulling).insert(name.clone(), BTreeMap::new());
        let _done = Forget(&self.inner.pulling, name.clone());
        let pulling = self.inner.pulling.clone();
        let report = move |p: super::registry::PullProgress| {
            if let Some(blobs) = lock(&pulling).get_mut(&name) {
                blobs.insert(p.digest.clone(), (p.done, p.total));
            }
            if p.done == p.total {
                tracing::info!(image = %name, blob = %p.digest, bytes = p.total, "containerd: pulled blob");
            }
        };
        let parts = self
            .inner
            .puller
            .pull(image, &cache, &report)
            .await
            .map_err(|e| RuntimeError::ImagePull(e.to_string()))?;
        self.inner
            .client
            .import(&parts, &self.inner.config.snapshotter)
            .await
            .map_err(|e| RuntimeError::StartFailed(e.to_string()))?;
        tracing::info!(image, took = ?started.elapsed(), "containerd: image pulled and unpacked");
        Ok(())
    }

    /// Resolves the image's config: its manifest (the host platform's, from an index) and
    /// the config it names (remembered until the image is pulled again).
    pub async fn image_config(&self, image: &str) -> Result<ImageRunConfig, RuntimeError> {
        if let Some(c) = lock(&self.inner.configs).get(image) {
            return Ok(c.clone());
        }
        let c = self.read_image_config(image).await?;
        lock(&self.inner.configs).insert(image.to_string(), c.clone());
        Ok(c)
    }

    async fn read_image_config(&self, image: &str) -> Result<ImageRunConfig, RuntimeError> {
        let c = &self.inner.client;
        let not_found =
            |name: &str| RuntimeError::StartFailed(format!("image {name} is not on this node"));
        let record = match ImagesClient::new(c.channel.clone())
            .get(c.req(GetImageRequest { name: image.into() }))
            .await
        {
            Ok(r) => r.into_inner().image.ok_or_else(|| not_found(image))?,
            Err(s) if s.code() == containerd_client::tonic::Code::NotFound => {
                return Err(not_found(image))
            }
            Err(s) => return Err(unavailable(call_error("get image", image)(s))),
        };
        let mut target = record.target.ok_or_else(|| not_found(image))?;
        for _ in 0..4 {
            let doc = self.read_blob(&target.digest).await?;
            let v: Value = serde_json::from_slice(&doc).map_err(|e| {
                RuntimeError::StartFailed(format!("image {image}: manifest {}: {e}", target.digest))
            })?;
            if let Some(list) = v["manifests"].as_array() {
                let pick = list
                    .iter()
                    .find(|m| {
                        m["platform"]["os"] == "linux"
                            && m["platform"]["architecture"] == oci_arch()
                    })
                    .ok_or_else(|| {
                        RuntimeError::StartFailed(format!(
                            "image {image} has no manifest for linux/{}",
                            oci_arch()
                        ))
                    })?;
                target.digest = pick["digest"].as_str().unwrap_or_default().into();
                continue;
            }
            let config = v["config"]["digest"].as_str().ok_or_else(|| {
                RuntimeError::StartFailed(format!("image {image}: manifest without a config"))
            })?;
            let bytes = self.read_blob(config).await?;
            let mut cfg = ImageRunConfig::parse(&bytes)
                .map_err(|e| RuntimeError::StartFailed(format!("image {image}: {e}")))?;
            cfg.layers = v["layers"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .filter_map(|l| l["digest"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(cfg);
        }
        Err(RuntimeError::StartFailed(format!(
            "image {image}: too many nested indexes"
        )))
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let c = &self.inner.client;
        let mut stream = ContentClient::new(c.channel.clone())
            .read(c.req(ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| unavailable(call_error("read content", digest)(s)))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| unavailable(call_error("read content", digest)(s)))?;
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    async fn stop_inner(
        &self,
        id: &str,
        signal: u32,
        grace: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let running = match lock(&self.inner.workloads).get(id) {
            None => return Err(RuntimeError::NotFound(id.into())),
            Some(e) => match &e.workload.state {
                WorkloadState::Exited(s) => return Ok(s.clone()),
                WorkloadState::Running => true,
            },
        };
        debug_assert!(running);
        let c = &self.inner.client;
        let exit = match c.stop_with(id, signal, grace).await {
            Ok(e) => e,
            Err(e) if e.is_not_found() => super::TaskExit { status: 255 },
            Err(e) => return Err(unavailable(e)),
        };
        let status = exit_status(exit.status, oom_killed(&self.inner.config.namespace, id));
        if let Some(e) = lock(&self.inner.workloads).get_mut(id) {
            if let Some(w) = e.waiter.take() {
                w.abort();
            }
            e.workload.state = WorkloadState::Exited(status.clone());
        }
        Ok(status)
    }
}

/// Makes a FIFO at `path`, opens it read-write (so the shim's write-only open finds a reader
/// at once, whenever it comes) and reads it until `done` says the command's output is
/// complete, keeping at most [`EXEC_OUTPUT_MAX`] bytes. Holding a write end means there is no
/// end-of-file to wait for: `done` ends the reading once what was written is drained.
fn fifo_reader(
    path: &std::path::Path,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Vec<u8>>, RuntimeError> {
    let io_err = |what: &str, e: std::io::Error| RuntimeError::Io {
        context: format!("cannot {what} the FIFO {}", path.display()),
        source: e,
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| io_err("make", e.into()))?;
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(|e| io_err("open", e))?;
    Ok(tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        fn keep(kept: &mut Vec<u8>, chunk: &[u8]) {
            let room = EXEC_OUTPUT_MAX.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        loop {
            tokio::select! {
                ready = rx.readable() => {
                    if ready.is_err() {
                        break;
                    }
                    match rx.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => keep(&mut kept, &buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(_) => break,
                    }
                }
                _ = done.changed() => {
                    // Drain what is buffered, then stop.
                    while let Ok(n) = rx.try_read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        keep(&mut kept, &buf[..n]);
                    }
                    break;
                }
            }
        }
        kept
    }))
}

/// Bytes received and size, per blob digest.
type BlobProgress = BTreeMap<String, (u64, u64)>;

/// Removes `key` from the map when dropped (the end of a pull or a start, however it ends).
struct Forget<'a, V>(&'a Mutex<HashMap<String, V>>, String);

impl<V> Drop for Forget<'_, V> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

/// `pulling IMAGE: 12.3 of 45.6 MB (1 of 3 blobs done)`, or `resolving` before any blob.
fn pull_progress_text(image: &str, blobs: &BlobProgress) -> String {
    if blobs.is_empty() {
        return format!("pulling {image}: resolving the manifest");
    }
    let (done, total) = blobs
        .values()
        .fold((0u64, 0u64), |(d, t), (bd, bt)| (d + bd, t + bt));
    let complete = blobs.values().filter(|(d, t)| d == t).count();
    let mb = |b: u64| b as f64 / 1e6;
    format!(
        "pulling {image}: {:.1} of {:.1} MB ({complete} of {} blobs done)",
        mb(done),
        mb(total),
        blobs.len()
    )
}

/// containerd's exit status as orch's: 128+N is death by signal N.
fn exit_status(status: u32, oom: bool) -> ExitStatus {
    let signal = (status > 128 && status < 128 + 65).then(|| (status - 128) as i32);
    ExitStatus {
        code: if signal.is_some() {
            None
        } else {
            Some(status as i32)
        },
        signal,
        oom_killed: oom,
        at: Some(Timestamp::now()),
    }
}

/// A container's own network, checked: the namespace it joins, its address, its hostname.
struct OwnNetwork {
    netns: PathBuf,
    ip: String,
    hostname: String,
}

/// Checks a [`WorkloadNetwork`](orch_core::runtime::WorkloadNetwork) for workload `id` and
/// names the container's host: the replica's name (the part of `namespace.name` after the
/// first dot), cut to 63 characters as Kubernetes cuts a pod's hostname.
fn own_network(
    id: &str,
    n: &orch_core::runtime::WorkloadNetwork,
) -> Result<OwnNetwork, RuntimeError> {
    let ip: std::net::IpAddr = n.ip.parse().map_err(|_| {
        RuntimeError::StartFailed(format!(
            "{id}: network ip {:?} is not an IPv4 or IPv6 address",
            n.ip
        ))
    })?;
    if !n.netns.is_absolute() {
        return Err(RuntimeError::StartFailed(format!(
            "{id}: network namespace {} is not an absolute path",
            n.netns.display()
        )));
    }
    if !n.netns.exists() {
        return Err(RuntimeError::StartFailed(format!(
            "{id}: network namespace {} does not exist",
            n.netns.display()
        )));
    }
    Ok(OwnNetwork {
        netns: n.netns.clone(),
        ip: ip.to_string(),
        hostname: replica_hostname(id),
    })
}

/// The hostname of workload `id` (`namespace.name`): `name`, at most 63 characters, without
/// a trailing `-` or `.` (as the kubelet cuts a pod's hostname).
fn replica_hostname(id: &str) -> String {
    let name = id.split_once('.').map_or(id, |(_, name)| name);
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(['-', '.']).to_string()
}

/// The `/etc/hosts` of a container with a network of its own, as the kubelet writes a pod's:
/// localhost and the IPv6 names, then `IP HOSTNAME`.
fn hosts_file(ip: &str, hostname: &str) -> String {
    format!(
        "# orch-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n\
         {ip}\t{hostname}\n"
    )
}

/// Writes `content` to `path` (in the state directory) and bind-mounts it read-only at
/// `destination` in the container.
fn file_mount(
    path: PathBuf,
    content: &str,
    destination: &str,
) -> Result<super::BindMount, RuntimeError> {
    std::fs::write(&path, content).map_err(|source| RuntimeError::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })?;
    Ok(super::BindMount {
        source: path,
        destination: destination.into(),
        read_only: true,
    })
}

/// The cgroup path orch gives a container (as `ctr` does: `/NAMESPACE/ID`).
fn cgroup_path(namespace: &str, id: &str) -> String {
    format!("/{namespace}/{id}")
}

/// Whether the kernel's OOM killer ended a process of the container's cgroup (v1 or v2).
fn oom_killed(namespace: &str, id: &str) -> bool {
    let path = cgroup_path(namespace, id);
    let count = |file: String| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim().parse::<u64>()))
            })
            .and_then(Result::ok)
            .unwrap_or(0)
    };
    count(format!("/sys/fs/cgroup/memory{path}/memory.oom_control")) > 0
        || count(format!("/sys/fs/cgroup{path}/memory.events")) > 0
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "containerd".into(),
            limits_enforced: true,
            limits_note: "cpu and memory limits in each container's cgroup (runc)".into(),
        }
    }

    fn supports(&self, template: &Template) -> bool {
        template.image.is_some()
    }

    /// Every container can join a network namespace of its own.
    fn joins_network(&self, template: &Template) -> bool {
        template.image.is_some()
    }

    fn progress(&self, id: &str) -> Option<String> {
        let image = lock(&self.inner.starting).get(id).cloned()?;
        let pulling = lock(&self.inner.pulling);
        let blobs = pulling.get(&image)?;
        Some(pull_progress_text(&image, blobs))
    }

    async fn unavailable(&self) -> Vec<(String, String)> {
        let probe = tokio::time::timeout(Duration::from_secs(2), self.inner.client.version());
        match probe.await {
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(e)) => vec![("containerd".into(), e.to_string())],
            Err(_) => vec![(
                "containerd".into(),
                format!(
                    "no answer within 2s on {}",
                    self.inner.config.socket.display()
                ),
            )],
        }
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<Workload, RuntimeError> {
        let _ops = self.op_lock(&spec.id).await;
        let t = &spec.template;
        crate::process::check_id(&spec.id)?;
        let Some(image) = t.image.as_deref() else {
            return Err(RuntimeError::Unsupported(
                "the containerd runtime runs images; this template has a command only".into(),
            ));
        };
        if let Some(e) = lock(&self.inner.workloads).get(&spec.id) {
            if e.workload.state == WorkloadState::Running {
                return Err(RuntimeError::AlreadyRunning(spec.id.clone()));
            }
        }
        lock(&self.inner.starting).insert(spec.id.clone(), image.to_string());
        let _started = Forget(&self.inner.starting, spec.id.clone());
        let c = &self.inner.client;
        // An exited container of the same workload is replaced.
        c.delete(&spec.id).await.map_err(unavailable)?;
        if t.image_pull_policy == PullPolicy::Always {
            self.pull_image(image, true).await?;
        }
        let cfg = match self.image_config(image).await {
            Ok(cfg) => cfg,
            Err(RuntimeError::StartFailed(m)) if m.ends_with("is not on this node") => {
                if t.image_pull_policy == PullPolicy::Never {
                    return Err(RuntimeError::StartFailed(format!(
                        "{m} and imagePullPolicy is Never: import it with `orchctl image import`"
                    )));
                }
                self.pull_image(image, false).await?;
                self.image_config(image).await?
            }
            Err(e) => return Err(e),
        };
        // The template's user wins over the image's.
        let user = match t.user.as_deref().or(cfg.user.as_deref()) {
            None => None,
            Some(u) => Some(self.resolve_user(image, &cfg, u).await?),
        };
        let host_ip = self.inner.config.host_ip.clone();
        let network = match &spec.network {
            Some(n) => Some(own_network(&spec.id, n)?),
            None => None,
        };
        // Fixed ports as declared (with a network of its own they are the container's, not
        // the host's); a dynamic one gets a number free on the host, which is as free in a
        // new namespace.
        let ports = crate::process::allocate_ports(&host_ip, &t.ports)?;
        // Later entries win; each name appears once, where it first appeared.
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: String, v: String| match env.iter_mut().find(|(n, _)| *n == k) {
            Some(e) => e.1 = v,
            None => env.push((k, v)),
        };
        for e in &cfg.env {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            set(k.into(), v.into());
        }
        // What orch sets, then the template's env with `$(VAR)` expanded from it (the image's
        // own env is not a source, as in Kubernetes).
        let mut vars: Vec<(String, String)> = Vec::new();
        if let Some(dns) = &spec.dns {
            vars.extend(dns.env());
        }
        vars.extend(
            spec.extra_env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone())),
        );
        if let Some(first) = ports.first() {
            vars.push(("PORT".into(), first.port.to_string()));
        }
        for p in &ports {
            vars.push((crate::process::port_var(&p.name), p.port.to_string()));
        }
        let own = orch_core::model::expand::expand_env(&vars, &t.env);
        vars.extend(own);
        for (k, v) in &vars {
            set(k.clone(), v.clone());
        }
        // The template's command and args expanded the same way (the image's are not).
        let mut expanded = t.clone();
        expanded.command = orch_core::model::expand::expand_args(&t.command, &vars);
        expanded.args = orch_core::model::expand::expand_args(&t.args, &vars);
        let argv = cfg.argv(&expanded);
        if argv.is_empty() {
            return Err(RuntimeError::StartFailed(format!(
                "image {image} has no entrypoint or cmd, and the template no command"
            )));
        }
        let started_at = Timestamp::now();
        let mut labels = HashMap::from([
            (LABEL_WORKLOAD.to_string(), spec.id.clone()),
            (LABEL_REPLICA_UID.to_string(), spec.replica_uid.clone()),
            (LABEL_TEMPLATE_HASH.to_string(), spec.template_hash.clone()),
            (LABEL_STARTED_AT.to_string(), started_at.0.to_string()),
            (LABEL_HOST_IP.to_string(), host_ip.clone()),
            (
                LABEL_PORTS.to_string(),
                ports
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.port))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        let log = self.log_path(&spec.id);
        let mut mounts = Vec::new();
        if let Some(dns) = &spec.dns {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            mounts.push(file_mount(
                self.resolv_conf_path(&spec.id),
                &dns.resolv_conf(&host),
                "/etc/resolv.conf",
            )?);
        }
        if let Some(n) = &network {
            labels.insert(LABEL_IP.into(), n.ip.clone());
            labels.insert(LABEL_NETNS.into(), n.netns.display().to_string());
            mounts.push(file_mount(
                self.hosts_path(&spec.id),
                &hosts_file(&n.ip, t.hostname.as_deref().unwrap_or(&n.hostname)),
                "/etc/hosts",
            )?);
        }
        let secrets_dir = self.tmpfs_dir(&spec.id);
        for (i, m) in spec.mounts.iter().enumerate() {
            match &m.source {
                MountSource::Files(files) | MountSource::File(files) => {
                    let dir = secrets_dir.join(i.to_string());
                    crate::mounts::write_files(&dir, files, user).map_err(|source| {
                        RuntimeError::Io {
                            context: format!("cannot write the files of mount {}", m.path),
                            source,
                        }
                    })?;
                    // One key: the file itself is bind-mounted at the mount's path.
                    let source = match (&m.source, files.files.first()) {
                        (MountSource::File(_), Some((name, _))) => dir.join(name),
                        _ => dir,
                    };
                    mounts.push(super::BindMount {
                        source,
                        destination: m.path.clone(),
                        read_only: true,
                    });
                }
                MountSource::Dir(dir) => mounts.push(super::BindMount {
                    source: dir.clone(),
                    destination: m.path.clone(),
                    read_only: m.read_only,
                }),
                MountSource::Tmpfs => {
                    // A directory on the host's tmpfs, not a fresh tmpfs per container: it
                    // lives as long as the replica, across restarts.
                    let dir = secrets_dir.join(i.to_string());
                    std::fs::create_dir_all(&dir)
                        .and_then(|()| match user {
                            Some((uid, gid)) => {
                                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                            }
                            None => Ok(()),
                        })
                        .map_err(|source| RuntimeError::Io {
                            context: format!(
                                "cannot create the tmpfs directory of mount {}",
                                m.path
                            ),
                            source,
                        })?;
                    mounts.push(super::BindMount {
                        source: dir,
                        destination: m.path.clone(),
                        read_only: m.read_only,
                    });
                }
            }
        }
        let cs = ContainerSpec {
            id: spec.id.clone(),
            root: Root::Image {
                name: image.into(),
                snapshotter: self.inner.config.snapshotter.clone(),
                chain_id: cfg.chain_id.clone(),
            },
            args: argv,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: t.working_dir.clone().or(cfg.working_dir.clone()),
            stdout: log.clone(),
            stderr: log,
            labels,
            read_only_root: t.read_only_root_filesystem,
            host_network: network.is_none(),
            netns: network.as_ref().map(|n| n.netns.clone()),
            hostname: t
                .hostname
                .clone()
                .or(network.as_ref().map(|n| n.hostname.clone())),
            user,
            cap_add: t.capabilities.add.clone(),
            cap_drop: t.capabilities.drop.clone(),
            cpu_millis: t.resources.cpu.map(|c| c.0),
            memory_bytes: t.resources.memory.map(|m| m.0),
            cgroups_path: Some(cgroup_path(&self.inner.config.namespace, &spec.id)),
            mounts,
            tmpfs: Vec::new(),
        };
        let pid = c.run(&cs).await.map_err(|e| match e {
            ContainerdError::Call { .. } | ContainerdError::Spec { .. } => {
                RuntimeError::StartFailed(e.to_string())
            }
            other => unavailable(other),
        })?;
        let workload = Workload {
            id: spec.id.clone(),
            replica_uid: spec.replica_uid.clone(),
            template_hash: spec.template_hash.clone(),
            runtime_id: format!("pid {pid}, container {}", spec.id),
            state: WorkloadState::Running,
            host_ip,
            ip: network.map(|n| n.ip),
            ports,
            started_at,
        };
        lock(&self.inner.workloads).insert(
            spec.id.clone(),
            Entry {
                workload: workload.clone(),
                waiter: None,
            },
        );
        self.watch_exit(&spec.id);
        Ok(workload)
    }

    async fn stop(
        &self,
        id: &str,
        signal: &str,
        grace: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let _ops = self.op_lock(id).await;
        let sig = signal_number(signal).unwrap_or(15) as u32;
        self.stop_inner(id, sig, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let _ops = self.op_lock(id).await;
        self.stop_inner(id, 9, Duration::ZERO).await?;
        self.inner.client.delete(id).await.map_err(unavailable)?;
        let _ = std::fs::remove_file(self.resolv_conf_path(id));
        let _ = std::fs::remove_file(self.hosts_path(id));
        let _ = crate::mounts::remove_tree(&self.tmpfs_dir(id));
        match std::fs::remove_file(self.log_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RuntimeError::Io {
                    context: format!("cannot remove {}", self.log_path(id).display()),
                    source,
                })
            }
        }
        lock(&self.inner.workloads).remove(id);
        lock(&self.inner.ops).remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Workload>, RuntimeError> {
        Ok(lock(&self.inner.workloads)
            .values()
            .map(|e| e.workload.clone())
            .collect())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

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
    ) -> Result<ExecOutput, RuntimeError> {
        match lock(&self.inner.workloads)
            .get(id)
            .map(|e| &e.workload.state)
        {
            None => return Err(RuntimeError::NotFound(id.into())),
            Some(WorkloadState::Exited(_)) => {
                return Err(RuntimeError::StartFailed(format!(
                    "{id} is not running: nothing to exec into"
                )))
            }
            Some(WorkloadState::Running) => {}
        }
        if command.is_empty() {
            return Err(RuntimeError::StartFailed("exec: no command given".into()));
        }
        let dir = self.scratch_dir("exec-")?;
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let (done, finished) = tokio::sync::watch::channel(false);
        let readers = [
            fifo_reader(&out, finished.clone())?,
            fifo_reader(&err, finished)?,
        ];
        let result = self
            .inner
            .client
            .exec(id, command, &out, &err, timeout)
            .await;
        // The exec process is deleted: the shim has written everything and closed its ends.
        let _ = done.send(true);
        let [r_out, r_err] = readers;
        let (stdout, stderr) = (r_out.await, r_err.await);
        let (exit, timed_out) = result.map_err(|e| match e {
            ContainerdError::Call { .. } | ContainerdError::Spec { .. } => {
                RuntimeError::StartFailed(e.to_string())
            }
            other => unavailable(other),
        })?;
        let collected = |r: Result<Vec<u8>, tokio::task::JoinError>| r.unwrap_or_default();
        let (stdout, stderr) = (collected(stdout), collected(stderr));
        let status = exit_status(exit.status, false);
        Ok(ExecOutput {
            code: status.code,
            signal: status.signal,
            timed_out,
            stdout,
            stderr,
        })
    }

    async fn import_image(
        &self,
        archive: &std::path::Path,
        name: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let dir = self.scratch_dir("import-")?;
        let (archive_path, out, name_owned) = (
            archive.to_path_buf(),
            dir.path().to_path_buf(),
            name.map(String::from),
        );
        let parts = tokio::task::spawn_blocking(move || {
            super::layout::read_oci_archive(&archive_path, &out, name_owned.as_deref(), oci_arch())
        })
        .await
        .map_err(|e| RuntimeError::Other(Box::new(e)))?
        .map_err(|e| RuntimeError::Other(e.into()))?;
        self.inner
            .client
            .import(&parts, &self.inner.config.snapshotter)
            .await
            .map_err(|e| RuntimeError::Other(Box::new(e)))?;
        lock(&self.inner.configs).remove(&parts.name);
        Ok(parts.name)
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        if !lock(&self.inner.workloads).contains_key(id) {
            return Err(RuntimeError::NotFound(id.into()));
        }
        let follow = opts.follow.then(|| {
            let id = id.to_string();
            crate::logs::while_present(Arc::downgrade(&self.inner), move |i: &Inner| {
                lock(&i.workloads).contains_key(&id)
            })
        });
        Ok(crate::logs::stream(self.log_path(id), 0, &opts, follow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_args_combine_as_in_kubernetes() {
        let img = ImageRunConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["c1".into()],
            ..ImageRunConfig::default()
        };
        let t = |command: &[&str], args: &[&str]| Template {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Template::default()
        };
        assert_eq!(img.argv(&t(&[], &[])), ["/ep", "c1"]);
        assert_eq!(img.argv(&t(&[], &["a"])), ["/ep", "a"]);
        assert_eq!(img.argv(&t(&["/x"], &[])), ["/x"]);
        assert_eq!(img.argv(&t(&["/x"], &["a"])), ["/x", "a"]);
    }

    #[test]
    fn pull_progress_reads_well() {
        let mut blobs = BTreeMap::new();
        assert_eq!(
            pull_progress_text("img", &blobs),
            "pulling img: resolving the manifest"
        );
        blobs.insert("a".to_string(), (500_000, 500_000));
        blobs.insert("b".to_string(), (1_000_000, 4_000_000));
        assert_eq!(
            pull_progress_text("img", &blobs),
            "pulling img: 1.5 of 4.5 MB (1 of 2 blobs done)"
        );
    }

    #[test]
    fn users_resolve_by_the_images_passwd_and_group() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        let r = |u| resolve_user(u, Some(passwd), Some(group));
        assert_eq!(r("app"), Ok((1000, 1001)));
        assert_eq!(r("app:staff"), Ok((1000, 50)));
        assert_eq!(r("1000"), Ok((1000, 1001)));
        assert_eq!(r("4242"), Ok((4242, 0)));
        assert_eq!(r("4242:7"), Ok((4242, 7)));
        assert!(r("nobody").unwrap_err().contains("\"nobody\""));
        assert!(r("app:wheel").unwrap_err().contains("\"wheel\""));
        let none = resolve_user("app", None, None).unwrap_err();
        assert!(none.contains("has none"), "{none}");
    }

    #[test]
    fn a_replica_is_named_by_its_name_and_listed_at_its_address() {
        assert_eq!(replica_hostname("default.web-0"), "web-0");
        assert_eq!(replica_hostname("prod.api.v2-1"), "api.v2-1");
        assert_eq!(replica_hostname("bare"), "bare");
        let long = format!("ns.{}-{}", "a".repeat(62), "b");
        assert_eq!(replica_hostname(&long), "a".repeat(62));
        let hosts = hosts_file("10.244.1.7", "web-0");
        let lines: Vec<&str> = hosts.lines().collect();
        assert!(lines.contains(&"127.0.0.1\tlocalhost"), "{hosts}");
        assert_eq!(lines.last(), Some(&"10.244.1.7\tweb-0"), "{hosts}");
    }

    #[test]
    fn a_bad_network_is_refused_naming_the_value() {
        use orch_core::runtime::WorkloadNetwork;
        let n = |netns: &str, ip: &str| WorkloadNetwork {
            netns: netns.into(),
            ip: ip.into(),
        };
        let err = |w: WorkloadNetwork| own_network("default.web-0", &w).err().unwrap().to_string();
        assert!(err(n("/proc/self/ns/net", "10.0.0.300")).contains("\"10.0.0.300\""));
        assert!(err(n("run/netns/x", "10.0.0.3")).contains("not an absolute path"));
        assert!(err(n("/run/netns/orch-no-such", "10.0.0.3")).contains("does not exist"));
        let ok = own_network("default.web-0", &n("/proc/self/ns/net", "10.0.0.3")).unwrap();
        assert_eq!(
            (ok.ip.as_str(), ok.hostname.as_str()),
            ("10.0.0.3", "web-0")
        );
    }

    #[test]
    fn exit_statuses_map_signals() {
        assert_eq!(exit_status(0, false).code, Some(0));
        assert_eq!(exit_status(3, false).code, Some(3));
        let killed = exit_status(137, true);
        assert_eq!(
            (killed.code, killed.signal, killed.oom_killed),
            (None, Some(9), true)
        );
    }

    #[test]
    fn image_configs_parse_and_name_what_is_missing() {
        let c = ImageRunConfig::parse(
            br#"{"config":{"Entrypoint":["/bin/sh"],"Env":["A=1"],"WorkingDir":"/w","User":"5"},
                 "rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh"]);
        assert_eq!(c.chain_id, "sha256:aa");
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        let err = ImageRunConfig::parse(br#"{"config":{}}"#).unwrap_err();
        assert!(err.contains("diff_ids"), "{err}");
        assert!(ImageRunConfig::parse(b"not json").is_err());
    }
}
