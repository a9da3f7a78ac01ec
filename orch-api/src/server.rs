//! The daemon side: accepts connections on a unix socket and answers requests against a
//! store and the node runtimes this process hosts.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use orch_core::engine::api::{self, ApiError};
use orch_core::model::object::{Kind, Object};
use orch_core::runtime::{LogOptions, Runtime, RuntimeError};
use orch_core::store::{decode, list_objects, Store, StoreError, WatchEvent};

use crate::protocol::{Applied, ErrorCode, Request, Response, WatchType, MAX_LINE_BYTES};

/// What the server answers from.
pub struct Backend {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Runtimes of the nodes this process runs agents for (for logs).
    pub runtimes: HashMap<String, Arc<dyn Runtime>>,
    /// A description of the store for `Info`.
    pub store_name: String,
    /// The scheduler the engine uses, for `Plan`.
    pub scheduler: Arc<dyn orch_core::scheduler::Scheduler>,
    /// Told the name of every node removed through this API (a cluster manager revokes its
    /// certificate).
    pub on_node_removed: Option<NodeRemovedHook>,
    /// Reaches replicas on nodes this process does not host (a cluster manager's agents).
    pub nodes: Option<Arc<dyn crate::grpc::node::NodeAccess>>,
    /// The volumes of each node this process runs an agent for (`orchctl volume rm`).
    pub volumes: HashMap<String, orch_core::node::VolumeLayout>,
    /// Asked, at apply, whether `namespace/service` may publish `port` on this process's
    /// node (the service proxy tries it); an error refuses the apply.
    pub port_check: Option<PortCheck>,
}

/// See [`Backend::port_check`]: `(namespace, service, port)` → fine, or why not.
pub type PortCheck = Arc<dyn Fn(&str, &str, u16) -> Result<(), String> + Send + Sync>;

/// Where a replica's runtime is: in this process, or behind its node's agent.
enum Target {
    Local(Arc<dyn Runtime>),
    Remote(Arc<dyn crate::grpc::node::NodeAccess>),
}

impl Target {
    async fn logs(
        &self,
        node: &str,
        id: &str,
        opts: LogOptions,
    ) -> Result<orch_core::runtime::LogStream, RuntimeError> {
        match self {
            Target::Local(rt) => rt.logs(id, opts).await,
            Target::Remote(n) => n.logs(node, id, opts).await,
        }
    }

    async fn exec(
        &self,
        node: &str,
        id: &str,
        command: &[String],
        timeout: std::time::Duration,
    ) -> Result<orch_core::runtime::ExecOutput, RuntimeError> {
        match self {
            Target::Local(rt) => rt.exec(id, command, timeout).await,
            Target::Remote(n) => n.exec(node, id, command, timeout).await,
        }
    }

    async fn progress(&self, node: &str, id: &str) -> Option<String> {
        match self {
            Target::Local(rt) => rt.progress(id),
            Target::Remote(n) => n.progress(node, id).await,
        }
    }
}

/// Called with the name of a node removed through the API.
pub type NodeRemovedHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Limits of the unix-socket server: what one client, or many, may make it hold.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Connections served at once (streams such as `watch -w` included); more are answered
    /// with an error and closed.
    pub max_connections: usize,
    /// The request line must arrive within this long of connecting (an idle or partial
    /// request is answered with an error and closed).
    pub request_timeout: Duration,
    /// The largest request line, in bytes (refused while reading, not after).
    pub max_request_bytes: usize,
    /// What all connections together may buffer of requests still arriving, in bytes; a
    /// connection that would go past it is answered `Unavailable` and closed.
    pub request_buffer_budget: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: 256,
            request_timeout: Duration::from_secs(10),
            max_request_bytes: MAX_LINE_BYTES,
            request_buffer_budget: 64 << 20,
        }
    }
}

/// Binds `path` (replacing only a stale socket, see [`bind`]), restricts it to its owner
/// (0600) and serves until `cancel` fires.
pub async fn serve(
    path: PathBuf,
    backend: Arc<Backend>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = bind(&path).await?;
    serve_listener(listener, path, backend, cancel, ServeLimits::default()).await
}

/// Serves on a listener from [`bind`] within `limits` until `cancel` fires, then removes the
/// socket file at `path`.
pub async fn serve_listener(
    listener: UnixListener,
    path: PathBuf,
    backend: Arc<Backend>,
    cancel: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let budget = Arc::new(Budget {
        left: std::sync::Mutex::new(limits.request_buffer_budget),
    });
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                // Out of file descriptors and the like: the listener itself is fine, and
                // the connections being served are not dropped.
                Err(e) => {
                    tracing::warn!(error = %e, "api socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (backend, cancel, limits, budget) = (
            backend.clone(),
            cancel.clone(),
            limits.clone(),
            budget.clone(),
        );
        let permit = connections.clone().try_acquire_owned();
        tokio::spawn(async move {
            let mut out = LineSink(stream);
            let Ok(_permit) = permit else {
                let refusal = error(
                    ErrorCode::Unavailable,
                    format!(
                        "too many connections: the daemon serves at most {} at once; retry later",
                        limits.max_connections
                    ),
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), send(&mut out, refusal)).await;
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = handle(&mut out, &backend, &limits, &budget) => {}
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Binds a unix socket with mode 0600. Something already at `path` is removed only when it
/// is a stale socket (a socket nothing answers on); a live daemon's socket, or any other
/// file, is refused with an error naming the path.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it (choose another --socket path)",
                    path.display()
                ),
            ));
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by another running daemon", path.display()),
                ))
            }
            // Nothing listens: a socket left behind by a daemon that did not stop cleanly.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} is a socket that cannot be checked ({e}); refusing to replace it",
                        path.display()
                    ),
                ))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Bytes of requests still arriving that all connections may hold together.
struct Budget {
    left: std::sync::Mutex<usize>,
}

/// What one connection holds of a [`Budget`]; given back when dropped.
struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Held<'_> {
    /// Takes `more` bytes, or says the budget is spent.
    fn take(&mut self, more: usize) -> bool {
        let mut left = self.budget.left.lock().unwrap_or_else(|p| p.into_inner());
        if *left < more {
            return false;
        }
        *left -= more;
        self.bytes += more;
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.budget.left.lock().unwrap_or_else(|p| p.into_inner()) += self.bytes;
    }
}

/// Reads one request line (without its newline) within the limits, or the error to answer.
/// `Ok(None)`: the client closed the connection before sending a whole line.
async fn read_request(
    stream: &mut UnixStream,
    limits: &ServeLimits,
    budget: &Budget,
) -> Result<Option<Vec<u8>>, Response> {
    use tokio::io::AsyncReadExt;
    let max = limits.max_request_bytes;
    let too_large = || {
        error(
            ErrorCode::TooLarge,
            format!(
                "request is larger than {max} bytes (the limit is {max} bytes); the connection is closed"
            ),
        )
    };
    let mut held = Held { budget, bytes: 0 };
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        let (data, end) = match chunk[..n].iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (&chunk[..n], false),
        };
        let need = line.len() + data.len();
        if need > max {
            return Err(too_large());
        }
        if need > line.capacity() {
            let want = need.max(line.capacity() * 2).min(max);
            if !held.take(want - line.capacity()) {
                return Err(error(
                    ErrorCode::Unavailable,
                    format!(
                        "the daemon is receiving too many large requests at once (at most {} bytes buffered); retry",
                        limits.request_buffer_budget
                    ),
                ));
            }
            line.reserve_exact(want - line.len());
        }
        line.extend_from_slice(data);
        if end {
            return Ok(Some(line));
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

fn store_error(e: StoreError) -> Response {
    let code = match &e {
        StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } => ErrorCode::Conflict,
        StoreError::NotFound { .. } => ErrorCode::NotFound,
        StoreError::Unavailable(_) | StoreError::WatchLagged | StoreError::Compacted { .. } => {
            ErrorCode::Unavailable
        }
        StoreError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::Internal,
    };
    error(code, e.to_string())
}

fn api_error(e: ApiError) -> Response {
    match e {
        ApiError::Invalid(m) => error(ErrorCode::Invalid, m),
        e @ ApiError::NotFound { .. } => error(ErrorCode::NotFound, e.to_string()),
        ApiError::Store(s) => store_error(s),
    }
}

async fn handle(out: &mut LineSink, backend: &Backend, limits: &ServeLimits, budget: &Budget) {
    let read = tokio::time::timeout(
        limits.request_timeout,
        read_request(&mut out.0, limits, budget),
    )
    .await;
    let line = match read {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return,
        Ok(Err(resp)) => {
            let _ = send(out, resp).await;
            return;
        }
        Err(_) => {
            let resp = error(
                ErrorCode::Invalid,
                format!(
                    "no complete request line within {:?}; the connection is closed",
                    limits.request_timeout
                ),
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), send(out, resp)).await;
            return;
        }
    };
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = send(
                out,
                error(ErrorCode::Invalid, format!("malformed request: {e}")),
            )
            .await;
            return;
        }
    };
    drop(line);
    answer_into(backend, req, out).await;
}

type Conn = dyn ResponseSink;

/// Where a streaming answer goes: the unix socket's lines, or a gRPC stream. Every answer
/// reaches a sink through one function, which redacts secret values on the way.
#[async_trait::async_trait]
pub trait ResponseSink: Send {
    /// Sends one response; an error means the client went away.
    async fn put(&mut self, resp: &Response) -> Result<(), ()>;
}

/// A unix-socket connection: responses as JSON lines.
struct LineSink(UnixStream);

#[async_trait::async_trait]
impl ResponseSink for LineSink {
    async fn put(&mut self, resp: &Response) -> Result<(), ()> {
        use tokio::io::AsyncWriteExt;
        let mut line = serde_json::to_string(resp).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"code\":\"Internal\",\"message\":\"encode: {e}\"}}")
        });
        line.push('\n');
        self.0.write_all(line.as_bytes()).await.map_err(|_| ())
    }
}

#[async_trait::async_trait]
impl ResponseSink for tokio::sync::mpsc::Sender<Response> {
    async fn put(&mut self, resp: &Response) -> Result<(), ()> {
        self.send(resp.clone()).await.map_err(|_| ())
    }
}

/// The one answer a one-shot request gets.
#[derive(Default)]
struct Slot(Option<Response>);

#[async_trait::async_trait]
impl ResponseSink for Slot {
    async fn put(&mut self, resp: &Response) -> Result<(), ()> {
        self.0.get_or_insert_with(|| resp.clone());
        Ok(())
    }
}

/// Every response leaves through here (both transports, one-shot and streaming): secret
/// values are redacted in whatever objects it carries.
async fn send(out: &mut Conn, resp: Response) -> Result<(), ()> {
    out.put(&redact(resp)).await
}

/// `resp` with every secret it carries redacted ([`api::redact`]).
fn redact(resp: Response) -> Response {
    match resp {
        Response::Objects { objects, revision } => Response::Objects {
            objects: objects.into_iter().map(api::redact).collect(),
            revision,
        },
        Response::Done { object } => Response::Done {
            object: api::redact(object),
        },
        Response::Watch { event, object } => Response::Watch {
            event,
            object: api::redact(object),
        },
        // No objects in these (apply's diffs redact secret values themselves).
        r @ (Response::Applied { .. }
        | Response::Plan { .. }
        | Response::Log { .. }
        | Response::Info { .. }
        | Response::Exec { .. }
        | Response::Imported { .. }
        | Response::Progress { .. }
        | Response::VolumeRemoved { .. }
        | Response::End
        | Response::Error { .. }) => r,
    }
}

/// Answers a streaming request (`Watch`, `Logs`) into `out`, or a one-shot one with a single
/// response.
pub async fn answer_into(backend: &Backend, req: Request, out: &mut Conn) {
    match req {
        Request::Watch {
            kind,
            namespace,
            since,
        } => watch(out, backend, kind, namespace, since).await,
        Request::Logs {
            namespace,
            replica,
            follow,
            tail_bytes,
            tail_lines,
        } => {
            logs(
                out,
                backend,
                &namespace,
                &replica,
                LogOptions {
                    follow,
                    tail_bytes,
                    tail_lines,
                },
            )
            .await
        }
        other => {
            let resp = respond(backend, other).await;
            let _ = send(out, resp).await;
        }
    }
}

/// Answers a one-shot request (secret values redacted, as every answer).
pub async fn answer(backend: &Backend, req: Request) -> Response {
    if matches!(req, Request::Watch { .. } | Request::Logs { .. }) {
        return error(ErrorCode::Invalid, "streaming request on a one-shot path");
    }
    let mut slot = Slot::default();
    answer_into(backend, req, &mut slot).await;
    slot.0
        .unwrap_or_else(|| error(ErrorCode::Internal, "no answer"))
}

/// The answer to a one-shot request, before [`send`] redacts it.
async fn respond(backend: &Backend, req: Request) -> Response {
    let store = &*backend.store;
    match req {
        Request::Apply {
            manifests,
            dry_run,
            namespace,
        } => {
            let objects = match crate::files::parse(&manifests, namespace.as_deref()) {
                Ok(o) => o,
                Err(e) => return error(ErrorCode::Invalid, e),
            };
            drop(manifests);
            if let Some(check) = &backend.port_check {
                let mut problems = Vec::new();
                for s in objects.iter().filter_map(|o| o.as_service()) {
                    for (i, p) in s.spec.publish.iter().enumerate() {
                        if let Err(e) = check(&s.metadata.namespace, &s.metadata.name, p.port) {
                            problems.push(format!(
                                "Service {}/{}: spec.publish[{i}].port: {e}",
                                s.metadata.namespace, s.metadata.name
                            ));
                        }
                    }
                }
                if !problems.is_empty() {
                    return error(ErrorCode::Invalid, problems.join("\n"));
                }
            }
            match api::apply(store, objects, dry_run).await {
                Ok(results) => Response::Applied {
                    results: results
                        .into_iter()
                        .map(|a| Applied {
                            changes: a.changes(),
                            name: a.object.display_name(),
                            namespace: a.object.metadata().namespace.clone(),
                            action: a.action.to_string(),
                        })
                        .collect(),
                    dry_run,
                },
                Err(e) => api_error(e),
            }
        }
        Request::Plan {
            manifests,
            namespace,
        } => {
            let objects = match crate::files::parse(&manifests, namespace.as_deref()) {
                Ok(o) => o,
                Err(e) => return error(ErrorCode::Invalid, e),
            };
            match api::plan(store, &*backend.scheduler, objects, 0).await {
                Ok(plan) => Response::Plan { plan },
                Err(e) => api_error(e),
            }
        }
        Request::Get {
            kind,
            namespace,
            name,
        } => match name {
            Some(name) => {
                let ns =
                    namespace.unwrap_or_else(|| orch_core::model::object::DEFAULT_NAMESPACE.into());
                match orch_core::store::get_object(store, kind, &ns, &name).await {
                    Ok(Some(o)) => Response::Objects {
                        revision: o.metadata().revision,
                        objects: vec![o],
                    },
                    Ok(None) => error(ErrorCode::NotFound, api::not_found(kind, &ns, &name)),
                    Err(e) => store_error(e),
                }
            }
            None => match list_objects(store, kind, namespace.as_deref()).await {
                Ok((objects, revision)) => Response::Objects { objects, revision },
                Err(e) => store_error(e),
            },
        },
        Request::Delete {
            kind,
            namespace,
            name,
        } => match api::delete(store, kind, &namespace, &name).await {
            Ok(object) => Response::Done { object },
            Err(e) => api_error(e),
        },
        Request::Scale {
            namespace,
            name,
            replicas,
        } => match api::scale(store, &namespace, &name, replicas).await {
            Ok(object) => Response::Done { object },
            Err(e) => api_error(e),
        },
        Request::Rollout {
            namespace,
            name,
            action,
        } => match api::rollout(store, &namespace, &name, action).await {
            Ok(object) => Response::Done { object },
            Err(e) => api_error(e),
        },
        Request::Node { node, action } => match api::node_op(store, &node, action).await {
            Ok(object) => {
                if let (orch_core::engine::api::NodeOp::Remove { .. }, Some(hook)) =
                    (action, &backend.on_node_removed)
                {
                    hook(&node);
                }
                Response::Done { object }
            }
            Err(e) => api_error(e),
        },
        Request::VolumeRemove { name, node } => remove_volume(backend, &name, node).await,
        Request::Info => Response::Info {
            version: env!("CARGO_PKG_VERSION").into(),
            store: backend.store_name.clone(),
            store_health: match tokio::time::timeout(
                std::time::Duration::from_secs(2),
                store.revision(),
            )
            .await
            {
                Ok(Ok(rev)) => format!("available (revision {rev})"),
                Ok(Err(e)) => format!("unavailable: {e}"),
                Err(_) => "unavailable: no answer within 2s".into(),
            },
            nodes: {
                let mut n: Vec<String> = backend.runtimes.keys().cloned().collect();
                n.sort();
                n
            },
        },
        Request::Exec {
            namespace,
            replica,
            command,
            timeout_secs,
        } => exec(backend, &namespace, &replica, &command, timeout_secs).await,
        Request::ImportImage { path, name } => import_image(backend, &path, name.as_deref()).await,
        Request::Progress { namespace, replica } => {
            match replica_runtime(backend, &namespace, &replica, "start under way").await {
                Ok((rep, node, rt)) => Response::Progress {
                    text: rt.progress(&node, &rep.runtime_name()).await,
                },
                Err(resp) => resp,
            }
        }
        Request::Watch { .. } | Request::Logs { .. } => {
            error(ErrorCode::Invalid, "streaming request on a one-shot path")
        }
    }
}

async fn watch(
    framed: &mut Conn,
    backend: &Backend,
    kind: Kind,
    namespace: Option<String>,
    since: Option<u64>,
) {
    let prefix = match &namespace {
        Some(ns) if kind.namespaced() => format!("{}{}/", kind.prefix(), ns),
        _ => kind.prefix(),
    };
    let (objs, rev) = match since {
        Some(rev) => (Vec::new(), rev),
        None => match list_objects(&*backend.store, kind, namespace.as_deref()).await {
            Ok(x) => x,
            Err(e) => {
                let _ = send(framed, store_error(e)).await;
                return;
            }
        },
    };
    for object in objs {
        if send(
            framed,
            Response::Watch {
                event: WatchType::Added,
                object,
            },
        )
        .await
        .is_err()
        {
            return;
        }
    }
    let mut stream = match backend.store.watch(&prefix, rev).await {
        Ok(s) => s,
        Err(e) => {
            let _ = send(framed, store_error(e)).await;
            return;
        }
    };
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let _ = send(framed, store_error(e)).await;
                return;
            }
        };
        for ev in batch.events {
            let (event, kv) = match &ev {
                WatchEvent::Put(kv) if kv.create_revision == kv.mod_revision => {
                    (WatchType::Added, kv)
                }
                WatchEvent::Put(kv) => (WatchType::Modified, kv),
                WatchEvent::Delete { prev, .. } => (WatchType::Deleted, prev),
            };
            let Ok(object) = decode(kv) else { continue };
            if send(framed, Response::Watch { event, object })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

async fn import_image(backend: &Backend, path: &str, name: Option<&str>) -> Response {
    let archive = Path::new(path);
    if !archive.is_absolute() {
        return error(
            ErrorCode::Invalid,
            format!("image import: {path:?} must be an absolute path"),
        );
    }
    let mut nodes: Vec<(&String, &Arc<dyn Runtime>)> = backend.runtimes.iter().collect();
    nodes.sort_by_key(|(n, _)| n.as_str());
    let mut images = Vec::new();
    for (node, rt) in nodes {
        match rt.import_image(archive, name).await {
            Ok(n) => images.push((node.clone(), n)),
            Err(e @ RuntimeError::Unsupported(_)) => {
                return error(ErrorCode::Invalid, format!("image import on {node}: {e}"))
            }
            Err(e @ RuntimeError::StartFailed(_)) => {
                return error(ErrorCode::Invalid, format!("image import: {e}"))
            }
            Err(e) => {
                return error(
                    ErrorCode::Unavailable,
                    format!("image import on {node}: {e}"),
                )
            }
        }
    }
    Response::Imported { images }
}

/// Longest an exec may run.
pub const EXEC_TIMEOUT_MAX_SECS: u64 = 3600;

async fn exec(
    backend: &Backend,
    namespace: &str,
    replica: &str,
    command: &[String],
    timeout_secs: u64,
) -> Response {
    if command.is_empty() {
        return error(ErrorCode::Invalid, "exec: no command given");
    }
    if timeout_secs == 0 || timeout_secs > EXEC_TIMEOUT_MAX_SECS {
        return error(
            ErrorCode::Invalid,
            format!("exec: timeout {timeout_secs}s: allowed 1 to {EXEC_TIMEOUT_MAX_SECS} seconds"),
        );
    }
    let (rep, node, rt) =
        match replica_runtime(backend, namespace, replica, "process to exec into").await {
            Ok(found) => found,
            Err(resp) => return resp,
        };
    match rt
        .exec(
            &node,
            &rep.runtime_name(),
            command,
            std::time::Duration::from_secs(timeout_secs),
        )
        .await
    {
        Ok(out) => Response::Exec {
            code: out.code,
            signal: out.signal,
            timed_out: out.timed_out,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(RuntimeError::NotFound(_)) => error(
            ErrorCode::NotFound,
            format!("replica {replica:?} is not running on {node}"),
        ),
        Err(e @ (RuntimeError::Unsupported(_) | RuntimeError::StartFailed(_))) => {
            error(ErrorCode::Invalid, format!("exec in {replica}: {e}"))
        }
        Err(e) => error(ErrorCode::Unavailable, format!("exec in {replica}: {e}")),
    }
}

/// The replica `namespace/replica`, the node it is bound to and that node's runtime on this
/// daemon; or the error to answer with (`what` names the operation in messages).
async fn replica_runtime(
    backend: &Backend,
    namespace: &str,
    replica: &str,
    what: &str,
) -> Result<(orch_core::model::object::Replica, String, Target), Response> {
    let rep = match orch_core::store::get_object(&*backend.store, Kind::Replica, namespace, replica)
        .await
    {
        Ok(Some(Object::Replica(r))) => r,
        Ok(_) => {
            return Err(error(
                ErrorCode::NotFound,
                format!("replica {replica:?} not found in namespace {namespace:?}"),
            ))
        }
        Err(e) => return Err(store_error(e)),
    };
    let Some(node) = rep.spec.node.clone() else {
        return Err(error(
            ErrorCode::NotFound,
            format!("replica {replica:?} is not scheduled yet: no {what}"),
        ));
    };
    let rt = match (backend.runtimes.get(&node), &backend.nodes) {
        (Some(rt), _) => Target::Local(rt.clone()),
        (None, Some(nodes)) => Target::Remote(nodes.clone()),
        (None, None) => {
            return Err(error(
                ErrorCode::Unavailable,
                format!(
                    "replica {replica:?} runs on node {node:?}, which this daemon does not host"
                ),
            ))
        }
    };
    Ok((rep, node, rt))
}

async fn logs(
    framed: &mut Conn,
    backend: &Backend,
    namespace: &str,
    replica: &str,
    opts: LogOptions,
) {
    let (rep, node, rt) = match replica_runtime(backend, namespace, replica, "logs yet").await {
        Ok(found) => found,
        Err(resp) => {
            let _ = send(framed, resp).await;
            return;
        }
    };
    let mut stream = match rt.logs(&node, &rep.runtime_name(), opts).await {
        Ok(s) => s,
        Err(RuntimeError::NotFound(_)) => {
            let _ = send(
                framed,
                error(
                    ErrorCode::NotFound,
                    format!("replica {replica:?} has not started on {node}: no logs yet"),
                ),
            )
            .await;
            return;
        }
        Err(e) => {
            let _ = send(framed, error(ErrorCode::Unavailable, e.to_string())).await;
            return;
        }
    };
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) if bytes.is_empty() => {}
            Ok(bytes) => {
                if send(
                    framed,
                    Response::Log {
                        data: String::from_utf8_lossy(&bytes).into_owned(),
                    },
                )
                .await
                .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let _ = send(framed, error(ErrorCode::Unavailable, e.to_string())).await;
                return;
            }
        }
    }
    let _ = send(framed, Response::End).await;
}

/// `orchctl volume rm`: refuses while a replica meant to run on the node mounts it, and on
/// nodes this process does not host; otherwise deletes the directory (the node's next
/// heartbeat stops reporting it).
async fn remove_volume(backend: &Backend, name: &str, node: Option<String>) -> Response {
    if let Err(e) = orch_core::node::VolumeLayout::check_name(name) {
        return error(ErrorCode::Invalid, e);
    }
    let store = &*backend.store;
    let nodes = match list_objects(store, Kind::Node, None).await {
        Ok((n, _)) => n,
        Err(e) => return store_error(e),
    };
    let holders: Vec<String> = nodes
        .iter()
        .filter_map(|o| match o {
            Object::Node(n) if n.status.volumes.iter().any(|v| v == name) => {
                Some(n.metadata.name.clone())
            }
            _ => None,
        })
        .collect();
    let node = match (node, holders.as_slice()) {
        (Some(n), _) if holders.contains(&n) => n,
        (Some(n), _) => {
            return error(
                ErrorCode::NotFound,
                format!("node {n} holds no volume {name:?}"),
            )
        }
        (None, [one]) => one.clone(),
        (None, []) => {
            return error(
                ErrorCode::NotFound,
                format!("no node holds volume {name:?}"),
            )
        }
        (None, many) => {
            return error(
                ErrorCode::Invalid,
                format!(
                    "volume {name:?} is on several nodes ({}): say which with --node",
                    many.join(", ")
                ),
            )
        }
    };
    let replicas = match list_objects(store, Kind::Replica, None).await {
        Ok((r, _)) => r,
        Err(e) => return store_error(e),
    };
    let users: Vec<String> = replicas
        .iter()
        .filter_map(|o| o.as_replica())
        .filter(|r| {
            r.spec.node.as_deref() == Some(node.as_str())
                && r.spec.desired == orch_core::model::object::DesiredState::Running
                && r.spec.template.volumes().contains(&name)
        })
        .map(|r| format!("{}/{}", r.metadata.namespace, r.metadata.name))
        .collect();
    if !users.is_empty() {
        return error(
            ErrorCode::Conflict,
            format!(
                "volume {name:?} on node {node} is in use by {}; delete or scale those first",
                users.join(", ")
            ),
        );
    }
    let Some(volumes) = backend.volumes.get(&node) else {
        // A node on another host: its agent removes it.
        return match &backend.nodes {
            Some(nodes) => match nodes.remove_volume(&node, name).await {
                Ok(()) => Response::VolumeRemoved {
                    name: name.to_string(),
                    node,
                },
                Err(e) => error(ErrorCode::Unavailable, e),
            },
            None => error(
                ErrorCode::NotFound,
                format!("node {node} is not served by this daemon"),
            ),
        };
    };
    match volumes.remove(name).await {
        Ok(()) => Response::VolumeRemoved {
            name: name.to_string(),
            node,
        },
        Err(e) => error(ErrorCode::Internal, e),
    }
}
