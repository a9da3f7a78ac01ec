//! The typed client: one method per request, each answering with its own result type. One
//! connection per request over the local socket, or requests over gRPC with mutual TLS to a
//! manager ([`Client::remote`]); the same methods work over both.

use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use orch_core::engine::api::{NodeOp, PlacementPlan, RolloutAction};
use orch_core::model::object::{Kind, Object};
use orch_core::runtime::LogOptions;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use crate::protocol::{
    Applied, ErrorCode, ManifestText, Request, Response, WatchType, MAX_LINE_BYTES,
};

/// Errors talking to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {error} (is orchd running? start it with `orchd server`, or pass --socket)", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why: part of the message, so not also reported as the error's source (an error
        /// chain would print it twice).
        error: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// Category.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// A manager could not be reached over the network (or refused the caller).
    #[error("{addr}: {message}")]
    Remote {
        /// Its address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The connection broke or the daemon sent nonsense.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The daemon answered a request with a response of another kind (a daemon of another
    /// version, or a bug).
    #[error("protocol: unexpected answer to {request}: {answer}")]
    Unexpected {
        /// The request's `op`: `get`, `apply`, ...
        request: &'static str,
        /// What came back: the response's `type`, or what was missing from it.
        answer: String,
    },
}

/// The result of [`Client::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyResult {
    /// Per object, in the order of the manifests.
    pub results: Vec<Applied>,
    /// Dry run: nothing was written.
    pub dry_run: bool,
}

/// The result of [`Client::list`].
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectList {
    /// The objects.
    pub objects: Vec<Object>,
    /// The store revision they were read at (a [`Client::watch`] can resume from it).
    pub revision: u64,
}

/// One event of [`Client::watch`].
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    /// Added, modified, deleted.
    pub event: WatchType,
    /// The object (its last version for deletes).
    pub object: Object,
}

/// The result of [`Client::exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, when it exited by itself.
    pub code: Option<i32>,
    /// Signal that ended it.
    pub signal: Option<i32>,
    /// Killed for running past its timeout.
    pub timed_out: bool,
    /// Standard output (lossy UTF-8, at most 1 MiB).
    pub stdout: String,
    /// Standard error (lossy UTF-8, at most 1 MiB).
    pub stderr: String,
}

/// The result of [`Client::info`]: what the daemon is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// orchd version.
    pub version: String,
    /// Which store (`memory`, `embedded:/path`).
    pub store: String,
    /// `available (revision N)`, or `unavailable: why`.
    pub store_health: String,
    /// Nodes this daemon runs agents for.
    pub nodes: Vec<String>,
}

/// The result of [`Client::volume_remove`]: what was removed where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRemoved {
    /// The volume.
    pub name: String,
    /// The node it was on.
    pub node: String,
}

/// A stream of typed items from a streaming request; it ends after the daemon's `End`, or
/// with an error.
pub type Stream<T> = BoxStream<'static, Result<T, ClientError>>;

/// A client for one daemon: its local socket, or a cluster's managers.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
    remote: Option<std::sync::Arc<Managers>>,
}

/// The managers a remote client knows, each with its (lazy) channel, and the one in use: a
/// request that finds it unreachable is sent to the next.
#[derive(Debug)]
struct Managers {
    channels: Vec<(String, tonic::transport::Channel)>,
    current: std::sync::atomic::AtomicUsize,
}

type ApiClient = crate::grpc::pb::api_client::ApiClient<tonic::transport::Channel>;

impl Client {
    /// A client for the socket at `path` (nothing is opened yet).
    pub fn new(path: impl AsRef<Path>) -> Client {
        Client {
            path: path.as_ref().to_path_buf(),
            remote: None,
        }
    }

    /// A client for the manager at `addr` (its `--listen`), authenticated with an
    /// administrator's credentials (nothing is opened yet).
    pub fn remote(
        addr: &str,
        creds: &crate::grpc::cluster::Credentials,
    ) -> Result<Client, ClientError> {
        Client::remote_any(&[addr.to_string()], creds)
    }

    /// A client for a cluster with these managers' addresses, tried in order: a request that
    /// cannot reach one goes to the next, which is then used first (nothing is opened yet).
    pub fn remote_any(
        addrs: &[String],
        creds: &crate::grpc::cluster::Credentials,
    ) -> Result<Client, ClientError> {
        let mut channels = Vec::new();
        for addr in addrs {
            if channels.iter().any(|(a, _)| a == addr) {
                continue;
            }
            let channel =
                crate::grpc::cluster::channel(addr, creds).map_err(|e| ClientError::Remote {
                    addr: addr.clone(),
                    message: e.to_string(),
                })?;
            channels.push((addr.clone(), channel));
        }
        if channels.is_empty() {
            return Err(ClientError::Remote {
                addr: String::new(),
                message: "no manager address given".into(),
            });
        }
        Ok(Client {
            path: PathBuf::new(),
            remote: Some(std::sync::Arc::new(Managers {
                channels,
                current: Default::default(),
            })),
        })
    }

    /// The managers' addresses, the one in use first (empty for a socket client).
    pub fn managers_known(&self) -> Vec<String> {
        let Some(m) = &self.remote else {
            return Vec::new();
        };
        let n = m.channels.len();
        let first = m.current.load(std::sync::atomic::Ordering::Relaxed) % n;
        (0..n)
            .map(|i| m.channels[(first + i) % n].0.clone())
            .collect()
    }

    /// Sends `f` to the manager in use, then to each other in turn while the one tried is
    /// unreachable; the first that answers is used first from then on. The last failure
    /// names every manager tried.
    async fn on_managers<T, F, Fut>(&self, m: &Managers, f: F) -> Result<T, ClientError>
    where
        F: Fn(ApiClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        use std::sync::atomic::Ordering;
        let n = m.channels.len();
        let first = m.current.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let (addr, ch) = &m.channels[at];
            let c = ApiClient::new(ch.clone())
                .max_decoding_message_size(crate::grpc::MAX_MESSAGE)
                .max_encoding_message_size(crate::grpc::MAX_MESSAGE);
            match f(c).await {
                Ok(v) => {
                    if at != first {
                        m.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(s) if manager_unreachable(&s) && i + 1 < n => {
                    failures.push(format!("{addr}: cannot reach the manager: {}", s.message()))
                }
                Err(s) if failures.is_empty() => return Err(remote(addr, s)),
                Err(s) => {
                    failures.push(remote(addr, s).to_string());
                    return Err(ClientError::Remote {
                        addr: m
                            .channels
                            .iter()
                            .map(|(a, _)| a.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        message: format!("no manager answered: {}", failures.join("; ")),
                    });
                }
            }
        }
        // Not reached: the last manager's failure returns above.
        Err(ClientError::Protocol("no manager to ask".into()))
    }

    async fn open(&self, req: &Request) -> Result<Framed<UnixStream, LinesCodec>, ClientError> {
        let line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if line.len() > MAX_LINE_BYTES {
            return Err(ClientError::Api {
                code: ErrorCode::TooLarge,
                message: format!(
                    "request is {} bytes; the limit is {MAX_LINE_BYTES} bytes (16 MiB)",
                    line.len()
                ),
            });
        }
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|error| ClientError::Connect {
                    path: self.path.clone(),
                    error,
                })?;
        let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
        if let Err(e) = framed.send(line).await {
            // The daemon may have refused the request before reading it all (too many
            // connections, too large): its answer says why better than the broken pipe.
            if let Ok(Some(Ok(answer))) =
                tokio::time::timeout(std::time::Duration::from_secs(1), framed.next()).await
            {
                into_result(parse(&answer)?)?;
            }
            return Err(ClientError::Protocol(e.to_string()));
        }
        Ok(framed)
    }

    /// Sends a one-shot request; an `Error` response becomes `Err`.
    async fn call(&self, req: Request) -> Result<Response, ClientError> {
        if let Some(m) = &self.remote {
            let msg = message(&req)?;
            let answer = self
                .on_managers(m, |mut c| {
                    let msg = msg.clone();
                    async move { c.call(msg).await }
                })
                .await?;
            return into_result(parse(&answer.into_inner().json)?);
        }
        let mut framed = self.open(&req).await?;
        match framed.next().await {
            Some(Ok(line)) => into_result(parse(&line)?),
            Some(Err(e)) => Err(ClientError::Protocol(e.to_string())),
            None => Err(ClientError::Protocol(
                "the daemon closed the connection without answering".into(),
            )),
        }
    }

    /// Sends a streaming request (`Watch`, `Logs`); the stream ends after `End` or an error.
    async fn stream(&self, req: Request) -> Result<Stream<Response>, ClientError> {
        if let Some(m) = &self.remote {
            let msg = message(&req)?;
            let s = self
                .on_managers(m, |mut c| {
                    let msg = msg.clone();
                    async move { c.stream(msg).await }
                })
                .await?
                .into_inner();
            let addr = self.managers_known().remove(0);
            return Ok(s
                .map(move |m| match m {
                    Ok(m) => parse(&m.json).and_then(into_result),
                    Err(s) => Err(remote(&addr, s)),
                })
                .take_while(|r| std::future::ready(!matches!(r, Ok(Response::End))))
                .boxed());
        }
        let framed = self.open(&req).await?;
        Ok(framed
            .map(|line| match line {
                Ok(l) => parse(&l).and_then(into_result),
                Err(e) => Err(ClientError::Protocol(e.to_string())),
            })
            .take_while(|r| std::future::ready(!matches!(r, Ok(Response::End))))
            .boxed())
    }
}

/// One method per request. Each sends its request and maps the answer it expects to its
/// result; any other answer becomes [`ClientError::Unexpected`] (built in one place), and an
/// `Error` answer becomes [`ClientError::Api`].
impl Client {
    /// Creates or updates the objects of `manifests`, all or nothing; `dry_run` validates and
    /// reports what would change, writing nothing. `namespace` (`orchctl -n`) is where objects
    /// that name none go (a document naming another one is refused); `None`: `default`.
    pub async fn apply(
        &self,
        manifests: Vec<ManifestText>,
        dry_run: bool,
        namespace: Option<&str>,
    ) -> Result<ApplyResult, ClientError> {
        let req = Request::Apply {
            manifests,
            dry_run,
            namespace: namespace.map(String::from),
        };
        match self.call(req).await? {
            Response::Applied { results, dry_run } => Ok(ApplyResult { results, dry_run }),
            other => Err(unexpected("apply", &other)),
        }
    }

    /// Where the replicas of `manifests` would go; writes nothing. `namespace` as for
    /// [`Client::apply`].
    pub async fn plan(
        &self,
        manifests: Vec<ManifestText>,
        namespace: Option<&str>,
    ) -> Result<PlacementPlan, ClientError> {
        let req = Request::Plan {
            manifests,
            namespace: namespace.map(String::from),
        };
        match self.call(req).await? {
            Response::Plan { plan } => Ok(plan),
            other => Err(unexpected("plan", &other)),
        }
    }

    /// The objects of `kind` in `namespace` (every namespace when `None`).
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<ObjectList, ClientError> {
        let req = Request::Get {
            kind,
            namespace: namespace.map(String::from),
            name: None,
        };
        match self.call(req).await? {
            Response::Objects { objects, revision } => Ok(ObjectList { objects, revision }),
            other => Err(unexpected("get", &other)),
        }
    }

    /// One object (`namespace` is ignored for kinds without one); a missing one is
    /// [`ClientError::Api`] with [`ErrorCode::NotFound`].
    pub async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Object, ClientError> {
        let req = Request::Get {
            kind,
            namespace: Some(namespace.into()),
            name: Some(name.into()),
        };
        match self.call(req).await? {
            Response::Objects { mut objects, .. } if objects.len() == 1 => Ok(objects.remove(0)),
            Response::Objects { objects, .. } => Err(ClientError::Unexpected {
                request: "get",
                answer: format!("{} objects for one name", objects.len()),
            }),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Deletes one object (a service's replicas are stopped); answers the object as it was.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Object, ClientError> {
        let req = Request::Delete {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        self.done("delete", req).await
    }

    /// Sets a service's replica count; answers the service as written.
    pub async fn scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: i64,
    ) -> Result<Object, ClientError> {
        let req = Request::Scale {
            namespace: namespace.into(),
            name: name.into(),
            replicas,
        };
        self.done("scale", req).await
    }

    /// Undoes, pauses or resumes a service's rollout; answers the service as written.
    pub async fn rollout(
        &self,
        namespace: &str,
        name: &str,
        action: RolloutAction,
    ) -> Result<Object, ClientError> {
        let req = Request::Rollout {
            namespace: namespace.into(),
            name: name.into(),
            action,
        };
        self.done("rollout", req).await
    }

    /// Cordons, uncordons, drains or removes a node; answers the node as written (or as it
    /// was, when removed).
    pub async fn node_op(&self, node: &str, action: NodeOp) -> Result<Object, ClientError> {
        let req = Request::Node {
            node: node.into(),
            action,
        };
        self.done("node", req).await
    }

    /// The changes of `kind` in `namespace` (every namespace when `None`): the current
    /// objects first (as `Added`), then each change. With `since` (a store revision), no
    /// listing, only the changes after it; too old a revision is an error saying so.
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        since: Option<u64>,
    ) -> Result<Stream<WatchEvent>, ClientError> {
        let req = Request::Watch {
            kind,
            namespace: namespace.map(String::from),
            since,
        };
        Ok(self
            .stream(req)
            .await?
            .map(|r| match r? {
                Response::Watch { event, object } => Ok(WatchEvent { event, object }),
                other => Err(unexpected("watch", &other)),
            })
            .boxed())
    }

    /// A replica's logs, chunk by chunk (lossy UTF-8).
    pub async fn logs(
        &self,
        namespace: &str,
        replica: &str,
        opts: LogOptions,
    ) -> Result<Stream<String>, ClientError> {
        let req = Request::Logs {
            namespace: namespace.into(),
            replica: replica.into(),
            follow: opts.follow,
            tail_bytes: opts.tail_bytes,
            tail_lines: opts.tail_lines,
        };
        Ok(self
            .stream(req)
            .await?
            .map(|r| match r? {
                Response::Log { data } => Ok(data),
                other => Err(unexpected("logs", &other)),
            })
            .boxed())
    }

    /// Runs `command` inside a running replica, killing it after `timeout_secs` (1 to 3600);
    /// answers its captured output and how it ended.
    pub async fn exec(
        &self,
        namespace: &str,
        replica: &str,
        command: Vec<String>,
        timeout_secs: u64,
    ) -> Result<ExecOutput, ClientError> {
        let req = Request::Exec {
            namespace: namespace.into(),
            replica: replica.into(),
            command,
            timeout_secs,
        };
        match self.call(req).await? {
            Response::Exec {
                code,
                signal,
                timed_out,
                stdout,
                stderr,
            } => Ok(ExecOutput {
                code,
                signal,
                timed_out,
                stdout,
                stderr,
            }),
            other => Err(unexpected("exec", &other)),
        }
    }

    /// Imports the OCI image layout tarball at `path` (absolute, on the daemon's machine)
    /// into every node the daemon runs, under `name` (default: the archive's ref name);
    /// answers `(node, image name)` per node.
    pub async fn import_image(
        &self,
        path: &str,
        name: Option<&str>,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let req = Request::ImportImage {
            path: path.into(),
            name: name.map(String::from),
        };
        match self.call(req).await? {
            Response::Imported { images } => Ok(images),
            other => Err(unexpected("importImage", &other)),
        }
    }

    /// What a replica's start is waiting for (`pulling IMAGE: ...`), or `None` when no start
    /// is waiting.
    pub async fn progress(
        &self,
        namespace: &str,
        replica: &str,
    ) -> Result<Option<String>, ClientError> {
        let req = Request::Progress {
            namespace: namespace.into(),
            replica: replica.into(),
        };
        match self.call(req).await? {
            Response::Progress { text } => Ok(text),
            other => Err(unexpected("progress", &other)),
        }
    }

    /// Removes a named local volume (its directory and data) from `node` (default: the only
    /// node that holds it).
    pub async fn volume_remove(
        &self,
        name: &str,
        node: Option<&str>,
    ) -> Result<VolumeRemoved, ClientError> {
        let req = Request::VolumeRemove {
            name: name.into(),
            node: node.map(String::from),
        };
        match self.call(req).await? {
            Response::VolumeRemoved { name, node } => Ok(VolumeRemoved { name, node }),
            other => Err(unexpected("volumeRemove", &other)),
        }
    }

    /// What the daemon is.
    pub async fn info(&self) -> Result<Info, ClientError> {
        match self.call(Request::Info).await? {
            Response::Info {
                version,
                store,
                store_health,
                nodes,
            } => Ok(Info {
                version,
                store,
                store_health,
                nodes,
            }),
            other => Err(unexpected("info", &other)),
        }
    }

    /// The managers of the cluster: who leads, their etcd members and health.
    pub async fn managers(&self) -> Result<Vec<crate::protocol::ManagerStatus>, ClientError> {
        match self.call(Request::Managers).await? {
            Response::Managers { managers } => Ok(managers),
            other => Err(unexpected("managers", &other)),
        }
    }

    /// Removes manager `name` (its etcd member and record); answers the etcd member removed
    /// with it (hex id), if it had one.
    pub async fn manager_remove(&self, name: &str) -> Result<Option<String>, ClientError> {
        match self
            .call(Request::ManagerRemove { name: name.into() })
            .await?
        {
            Response::ManagerRemoved { etcd_member, .. } => Ok(etcd_member),
            other => Err(unexpected("managerRemove", &other)),
        }
    }

    /// Sends a request answered by `Done`, and answers its object.
    async fn done(&self, request: &'static str, req: Request) -> Result<Object, ClientError> {
        match self.call(req).await? {
            Response::Done { object } => Ok(object),
            other => Err(unexpected(request, &other)),
        }
    }
}

/// The error for an answer of another kind than `request` gets: names the answer's `type`.
fn unexpected(request: &'static str, answer: &Response) -> ClientError {
    let answer = serde_json::to_value(answer)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(String::from))
        .unwrap_or_else(|| "an unknown response".into());
    ClientError::Unexpected { request, answer }
}

fn message(req: &Request) -> Result<crate::grpc::pb::ApiMessage, ClientError> {
    let json = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    // The frame adds a few bytes to the JSON.
    let limit = crate::grpc::MAX_MESSAGE - 16;
    if json.len() > limit {
        return Err(ClientError::Api {
            code: ErrorCode::TooLarge,
            message: format!(
                "request is {} bytes; the cluster API's message limit is {} bytes (4 MiB)",
                json.len(),
                crate::grpc::MAX_MESSAGE
            ),
        });
    }
    Ok(crate::grpc::pb::ApiMessage { json })
}

/// Whether `s` says the manager could not be reached (so another may answer): the
/// connection failed, or the manager shed the request.
fn manager_unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

fn remote(addr: &str, s: tonic::Status) -> ClientError {
    ClientError::Remote {
        addr: addr.into(),
        message: match s.code() {
            tonic::Code::Unavailable => format!("cannot reach the manager: {}", s.message()),
            _ => s.message().to_string(),
        },
    }
}

fn parse(line: &str) -> Result<Response, ClientError> {
    serde_json::from_str(line).map_err(|e| ClientError::Protocol(format!("bad response: {e}")))
}

fn into_result(r: Response) -> Result<Response, ClientError> {
    match r {
        Response::Error { code, message } => Err(ClientError::Api { code, message }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// A daemon that answers every request with `answer` (one JSON line).
    async fn answering(answer: &'static str) -> (tempfile::TempDir, Client) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut line = String::new();
                BufReader::new(&mut s).read_line(&mut line).await.unwrap();
                s.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
            }
        });
        (dir, Client::new(&socket))
    }

    #[tokio::test]
    async fn an_answer_of_another_kind_is_one_clear_error() {
        let (_dir, client) = answering(r#"{"type":"progress","text":null}"#).await;
        let e = client.list(Kind::Service, None).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Unexpected { request: "get", answer } if answer == "progress"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "protocol: unexpected answer to get: progress"
        );
        let e = client.info().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "protocol: unexpected answer to info: progress"
        );
        assert_eq!(client.progress("default", "web-1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_get_answered_without_its_object_is_an_error() {
        let (_dir, client) = answering(r#"{"type":"objects","objects":[],"revision":3}"#).await;
        let e = client
            .get(Kind::Service, "default", "web")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "protocol: unexpected answer to get: 0 objects for one name"
        );
        assert_eq!(client.list(Kind::Service, None).await.unwrap().revision, 3);
    }

    #[tokio::test]
    async fn an_error_answer_is_an_api_error() {
        let (_dir, client) = answering(
            r#"{"type":"error","code":"NotFound","message":"service \"web\" not found"}"#,
        )
        .await;
        let e = client.scale("default", "web", 2).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Api { code: ErrorCode::NotFound, message } if message == "service \"web\" not found"),
            "{e:?}"
        );
    }
}
