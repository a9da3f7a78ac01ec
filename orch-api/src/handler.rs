//! The request handler both transports use: answers a [`Request`] from a [`Caller`] against
//! a store and the node runtimes this process hosts. The unix socket ([`crate::server`]) and
//! the gRPC API (`grpc::api`, in [`crate::grpc::cluster::serve`]) only frame, limit and authenticate (each says who the
//! caller is); what a caller may ask is decided here, and every answer leaves through one
//! function, which redacts secret values.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;

use orch_core::engine::api::{self, ApiError};
use orch_core::model::object::{Kind, Object};
use orch_core::runtime::{LogOptions, Runtime, RuntimeError};
use orch_core::store::{decode, list_objects, Store, StoreError, WatchEvent};

use crate::protocol::{Applied, ErrorCode, Request, Response, WatchType};

/// Who asks, as the transport authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Whoever could open the daemon's unix socket (mode 0600: its owner, an administrator).
    Local,
    /// An administrator (or a manager) with a cluster certificate, by the name it carries
    /// (`CN=admin:NAME`, `CN=manager`). Nodes never get here: the gRPC transport refuses them.
    Admin(String),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Local => f.write_str("local socket"),
            Caller::Admin(name) => write!(f, "admin {name}"),
        }
    }
}

/// What `caller` may ask: every caller the transports let through is an administrator and
/// may ask anything (access control, when it comes, decides here for both transports). A
/// refusal is the error to answer with.
fn authorize(caller: &Caller, _req: &Request) -> Result<(), (ErrorCode, String)> {
    match caller {
        Caller::Local | Caller::Admin(_) => Ok(()),
    }
}

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
    /// The managers of the cluster (`orchctl get managers`, `manager rm`); `None` in a
    /// daemon that is no manager (`orchd up`).
    pub managers: Option<Arc<dyn crate::managers::ManagerAccess>>,
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

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
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

type Conn = dyn ResponseSink;

/// Where a streaming answer goes: the unix socket's lines, or a gRPC stream. Every answer
/// reaches a sink through one function, which redacts secret values on the way.
#[async_trait::async_trait]
pub(crate) trait ResponseSink: Send {
    /// Sends one response; an error means the client went away.
    async fn put(&mut self, resp: &Response) -> Result<(), ()>;
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
pub(crate) async fn send(out: &mut Conn, resp: Response) -> Result<(), ()> {
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
        | Response::Managers { .. }
        | Response::ManagerRemoved { .. }
        | Response::End
        | Response::Error { .. }) => r,
    }
}

/// Answers `caller`'s streaming request (`Watch`, `Logs`) into `out`, or a one-shot one with
/// a single response.
pub(crate) async fn answer_into(backend: &Backend, caller: &Caller, req: Request, out: &mut Conn) {
    if let Err((code, why)) = authorize(caller, &req) {
        let _ = send(out, error(code, why)).await;
        return;
    }
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

/// Answers `caller`'s one-shot request (secret values redacted, as every answer).
pub async fn answer(backend: &Backend, caller: &Caller, req: Request) -> Response {
    if matches!(req, Request::Watch { .. } | Request::Logs { .. }) {
        return error(ErrorCode::Invalid, "streaming request on a one-shot path");
    }
    let mut slot = Slot::default();
    answer_into(backend, caller, req, &mut slot).await;
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
            let parsed = match parse_manifests(&manifests, namespace.as_deref()) {
                Ok(p) => p,
                Err(e) => return error(ErrorCode::Invalid, e),
            };
            let warnings = warnings_by_object(&manifests, parsed.warnings);
            drop(manifests);
            if let Some(check) = &backend.port_check {
                if let Err(e) = check_node_ports(check, &parsed.objects) {
                    return error(ErrorCode::Invalid, e);
                }
            }
            let objects = parsed.objects;
            match patiently(|| api::apply(store, objects.clone(), dry_run)).await {
                Ok(results) => Response::Applied {
                    results: results
                        .into_iter()
                        .zip(warnings.into_iter().chain(std::iter::repeat_with(Vec::new)))
                        .map(|(a, warnings)| Applied {
                            changes: a.changes(),
                            name: a.object.display_name(),
                            namespace: a.object.metadata().namespace.clone(),
                            action: a.action.to_string(),
                            warnings,
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
            let parsed = match parse_manifests(&manifests, namespace.as_deref()) {
                Ok(p) => p,
                Err(e) => return error(ErrorCode::Invalid, e),
            };
            match api::plan(store, &*backend.scheduler, parsed.objects, 0).await {
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
                match patiently(|| orch_core::store::get_object(store, kind, &ns, &name)).await {
                    Ok(Some(o)) => Response::Objects {
                        revision: o.metadata().revision,
                        objects: vec![o],
                    },
                    Ok(None) => error(ErrorCode::NotFound, api::not_found(kind, &ns, &name)),
                    Err(e) => store_error(e),
                }
            }
            None => match patiently(|| list_objects(store, kind, namespace.as_deref())).await {
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
        } => match patiently(|| api::scale(store, &namespace, &name, replicas)).await {
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
        Request::Managers => managers(backend).await,
        Request::ManagerRemove { name } => remove_manager(backend, &name).await,
        Request::Watch { .. } | Request::Logs { .. } => {
            error(ErrorCode::Invalid, "streaming request on a one-shot path")
        }
    }
}

fn no_managers() -> Response {
    error(
        ErrorCode::Invalid,
        "this daemon is not a cluster manager (orchd up runs no managers)",
    )
}

/// `orchctl get managers`: the records in the store, who leads, the etcd members and their
/// health.
async fn managers(backend: &Backend) -> Response {
    let Some(access) = &backend.managers else {
        return no_managers();
    };
    let records = match crate::managers::records(&*backend.store).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let etcd = match access.etcd().await {
        Ok(v) => v,
        Err(e) => return error(ErrorCode::Unavailable, format!("etcd members: {e}")),
    };
    let leader = access.leader().await;
    Response::Managers {
        managers: crate::managers::statuses(
            &records,
            &access.own(),
            leader.as_deref(),
            etcd.as_ref(),
        ),
    }
}

/// `orchctl manager rm NAME`.
async fn remove_manager(backend: &Backend, name: &str) -> Response {
    let Some(access) = &backend.managers else {
        return no_managers();
    };
    match crate::managers::remove(&*backend.store, &**access, name).await {
        Ok(removed) => {
            tracing::info!(manager = %name, etcd_member = ?removed.etcd_member, "cluster: manager removed");
            Response::ManagerRemoved {
                name: name.to_string(),
                etcd_member: removed.etcd_member,
            }
        }
        Err((code, message)) => error(code, message),
    }
}

/// How long a get, an apply or a scale waits out a store that is unavailable for a moment.
const WRITE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `f` again (every 200 ms, for up to [`WRITE_PATIENCE`]) while the store is
/// unavailable: an etcd that lost its raft leader with a member elects another within a
/// second (with orch's members; a member cut off and healed takes about as long to rejoin),
/// and a read, an apply or a scale should not fail for it. Only for requests whose
/// repetition is harmless (an apply that landed is `unchanged` the second time); without a
/// quorum the error comes after the wait.
async fn patiently<T, E, F, Fut>(f: F) -> Result<T, E>
where
    E: MaybeUnavailable,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
    loop {
        match f().await {
            Err(e) if e.unavailable() && tokio::time::Instant::now() < deadline => {
                tracing::debug!("store unavailable; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Errors [`patiently`] waits out.
trait MaybeUnavailable {
    /// Whether the store was unavailable.
    fn unavailable(&self) -> bool;
}

impl MaybeUnavailable for StoreError {
    fn unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl MaybeUnavailable for ApiError {
    fn unavailable(&self) -> bool {
        matches!(self, ApiError::Store(StoreError::Unavailable(_)))
    }
}

/// Asks `check` (the service proxy of this process's node) whether each published port and
/// given route node port of `objects` can be listened on here; the problems, naming each field, refuse the apply.
/// Conflicts between services are [`api::apply`]'s to find, in the store.
fn check_node_ports(check: &PortCheck, objects: &[Object]) -> Result<(), String> {
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
    // A route's given node ports likewise (allocated ones are the route controller's).
    for r in objects.iter().filter_map(|o| o.as_route()) {
        let given = r.spec.ports.iter().enumerate();
        for (i, n) in given.filter_map(|(i, p)| Some((i, p.node_port?))) {
            if !r.spec.node_ports {
                continue;
            }
            if let Err(e) = check(&r.metadata.namespace, &r.metadata.name, n) {
                problems.push(format!(
                    "Route {}/{}: spec.ports[{i}].nodePort: {e}",
                    r.metadata.namespace, r.metadata.name
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// The objects of a request's manifests, parsed and validated ([`crate::files::parse`]):
/// the server is where manifests are checked, whatever the client checked before sending.
fn parse_manifests(
    manifests: &[crate::protocol::ManifestText],
    namespace: Option<&str>,
) -> Result<orch_core::model::manifest::Parsed, String> {
    crate::files::parse_with_warnings(manifests, namespace)
}

/// `warnings` (of fields ignored in the manifests) by object, in the order the objects were
/// parsed: every document of a manifest that parsed is one object. Without warnings, empty
/// (objects past the end have none).
fn warnings_by_object(
    manifests: &[crate::protocol::ManifestText],
    warnings: Vec<orch_core::model::manifest::ManifestWarning>,
) -> Vec<Vec<String>> {
    let mut by_document: Vec<Vec<String>> = Vec::new();
    let mut origins: Vec<(&str, usize)> = Vec::new();
    if !warnings.is_empty() {
        for m in manifests {
            let documents = orch_core::model::manifest::named_namespaces(&m.source, &m.text)
                .map(|d| d.len())
                .unwrap_or_default();
            origins.extend((1..=documents).map(|n| (m.source.as_str(), n)));
        }
        by_document = vec![Vec::new(); origins.len()];
        for w in warnings {
            match origins
                .iter()
                .position(|&(s, n)| s == w.source && n == w.document)
            {
                Some(i) => by_document[i].push(w.to_string()),
                // Not expected (every document is one object): still said, on the first.
                None => {
                    if by_document.is_empty() {
                        by_document.push(Vec::new());
                    }
                    by_document[0].push(w.to_string())
                }
            }
        }
    }
    by_document
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
pub(crate) const EXEC_TIMEOUT_MAX_SECS: u64 = 3600;

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
                && r.spec
                    .template
                    .volume_names(&r.metadata.name)
                    .iter()
                    .any(|v| v == name)
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
