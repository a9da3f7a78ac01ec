//! The agent's side of logs, exec and pull progress: an agent serves the node service ([`serve`]) on its
//! own port (mutual TLS with its node certificate, which names `NODE.orch-node`); the manager
//! reaches it through [`NodeDialer`] when an administrator asks for a replica on that node.
//! Only the manager (or an administrator) may call.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use orch_core::model::object::{Kind, Object};
use orch_core::node::VolumeLayout;
use orch_core::runtime::{ExecOutput, LogOptions, LogStream, Runtime, RuntimeError};
use orch_core::store::Store;
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

use super::auth::{self, Identity};
use super::pb;
use super::pki::Credentials;

/// The DNS name in node `name`'s certificate that the manager checks when it dials it.
pub(crate) fn node_dns_name(name: &str) -> String {
    format!("{name}.orch-node")
}

fn status_of(e: RuntimeError) -> Status {
    match e {
        RuntimeError::NotFound(m) => Status::not_found(m),
        RuntimeError::Unsupported(m) => Status::unimplemented(m),
        RuntimeError::StartFailed(m) => Status::failed_precondition(m),
        e => Status::unavailable(e.to_string()),
    }
}

fn error_of(node: &str, s: Status) -> RuntimeError {
    match s.code() {
        tonic::Code::NotFound => RuntimeError::NotFound(s.message().to_string()),
        tonic::Code::Unimplemented => RuntimeError::Unsupported(s.message().to_string()),
        tonic::Code::FailedPrecondition => RuntimeError::StartFailed(s.message().to_string()),
        _ => RuntimeError::Unavailable(format!("node {node}: {}", s.message())),
    }
}

/// Serves a node's runtime to its manager.
pub(crate) struct NodeService {
    runtime: Arc<dyn Runtime>,
    volumes: Option<VolumeLayout>,
}

fn manager_only<T>(req: &Request<T>) -> Result<(), Status> {
    match auth::identity(req)? {
        Identity::Admin(_) => Ok(()),
        Identity::Node(n) => Err(Status::permission_denied(format!(
            "node {n} may not reach another node's replicas"
        ))),
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    type LogsStream = Chunks;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Chunks>, Status> {
        manager_only(&req)?;
        let r = req.into_inner();
        let stream = self
            .runtime
            .logs(
                &r.id,
                LogOptions {
                    follow: r.follow,
                    tail_bytes: r.tail_bytes,
                    tail_lines: r.tail_lines,
                },
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(Box::pin(stream.map(|c| {
            c.map(|data| pb::LogChunk { data }).map_err(status_of)
        }))))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        manager_only(&req)?;
        let r = req.into_inner();
        let out = self
            .runtime
            .exec(&r.id, &r.command, Duration::from_millis(r.timeout_ms))
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ExecResponse {
            code: out.code,
            signal: out.signal,
            timed_out: out.timed_out,
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    async fn progress(
        &self,
        req: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::ProgressResponse>, Status> {
        manager_only(&req)?;
        Ok(Response::new(pb::ProgressResponse {
            text: self.runtime.progress(&req.get_ref().id),
        }))
    }

    async fn remove_volume(
        &self,
        req: Request<pb::RemoveVolumeRequest>,
    ) -> Result<Response<pb::RemoveVolumeResponse>, Status> {
        manager_only(&req)?;
        let name = &req.get_ref().name;
        VolumeLayout::check_name(name).map_err(Status::invalid_argument)?;
        let volumes = self
            .volumes
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this node keeps no volumes"))?;
        volumes.remove(name).await.map_err(Status::internal)?;
        Ok(Response::new(pb::RemoveVolumeResponse {}))
    }
}

/// Serves `runtime` on `listener` with the node's credentials until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    creds: &Credentials,
    runtime: Arc<dyn Runtime>,
    volumes: Option<VolumeLayout>,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(&creds.cert_pem, &creds.key_pem))
        .client_ca_root(Certificate::from_pem(&creds.ca_pem));
    // No time limit: an exec may run for an hour (its own timeout ends it).
    let limits = super::limits::Limits {
        concurrency_per_connection: 64,
        timeout: None,
        ..Default::default()
    };
    Server::builder()
        .tls_config(tls)?
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .layer(limits.layer())
        .add_service(
            pb::node_server::NodeServer::new(NodeService { runtime, volumes })
                .max_encoding_message_size(super::MAX_MESSAGE * 2 + 4096),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            cancel.cancelled_owned(),
        )
        .await
}

/// How the manager reaches a replica on another host (logs, exec, progress).
#[async_trait]
pub trait NodeAccess: Send + Sync {
    /// The replica's logs from node `node`.
    async fn logs(&self, node: &str, id: &str, opts: LogOptions)
        -> Result<LogStream, RuntimeError>;
    /// Runs a command in the replica on node `node`.
    async fn exec(
        &self,
        node: &str,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;
    /// What the replica's start on node `node` waits for.
    async fn progress(&self, node: &str, id: &str) -> Option<String>;
    /// Removes named volume `name` from the node.
    async fn remove_volume(&self, node: &str, name: &str) -> Result<(), String>;
}

/// Dials agents at the endpoint their node object reports, with the manager's certificate,
/// checking each agent's certificate names that node.
pub struct NodeDialer {
    store: Arc<dyn Store>,
    creds: Credentials,
    channels: Mutex<HashMap<(String, String), Channel>>,
}

impl NodeDialer {
    /// Dials with `creds` (the manager's), finding endpoints in `store`.
    pub fn new(store: Arc<dyn Store>, creds: Credentials) -> NodeDialer {
        NodeDialer {
            store,
            creds,
            channels: Mutex::new(HashMap::new()),
        }
    }

    async fn client(
        &self,
        node: &str,
    ) -> Result<pb::node_client::NodeClient<Channel>, RuntimeError> {
        let endpoint = match orch_core::store::get_object(&*self.store, Kind::Node, "", node).await {
            Ok(Some(Object::Node(n))) if !n.status.endpoint.is_empty() => n.status.endpoint,
            Ok(Some(_)) => {
                return Err(RuntimeError::Unavailable(format!(
                    "node {node} reports no agent endpoint (an agent older than this manager, or one in the manager's own process)"
                )))
            }
            Ok(None) => return Err(RuntimeError::NotFound(format!("node {node}"))),
            Err(e) => return Err(RuntimeError::Unavailable(e.to_string())),
        };
        let key = (node.to_string(), endpoint.clone());
        if let Some(ch) = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(pb::node_client::NodeClient::new(ch.clone()));
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.creds.ca_pem))
            .identity(TlsIdentity::from_pem(
                &self.creds.cert_pem,
                &self.creds.key_pem,
            ))
            .domain_name(node_dns_name(node));
        let ch = Channel::from_shared(format!("https://{endpoint}"))
            .map_err(|e| {
                RuntimeError::Unavailable(format!("node {node} endpoint {endpoint:?}: {e}"))
            })?
            .connect_timeout(Duration::from_secs(5))
            .tls_config(tls)
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
            .connect_lazy();
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, ch.clone());
        Ok(pb::node_client::NodeClient::new(ch)
            .max_decoding_message_size(super::MAX_MESSAGE * 2 + 4096))
    }
}

#[async_trait]
impl NodeAccess for NodeDialer {
    async fn logs(
        &self,
        node: &str,
        id: &str,
        opts: LogOptions,
    ) -> Result<LogStream, RuntimeError> {
        let s = self
            .client(node)
            .await?
            .logs(pb::LogsRequest {
                id: id.into(),
                follow: opts.follow,
                tail_bytes: opts.tail_bytes,
                tail_lines: opts.tail_lines,
            })
            .await
            .map_err(|s| error_of(node, s))?
            .into_inner();
        let node = node.to_string();
        Ok(
            s.map(move |c| c.map(|c| c.data).map_err(|s| error_of(&node, s)))
                .boxed(),
        )
    }

    async fn exec(
        &self,
        node: &str,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut client = self.client(node).await?;
        let r = client
            .exec(pb::ExecRequest {
                id: id.into(),
                command: command.to_vec(),
                timeout_ms: timeout.as_millis() as u64,
            })
            .await
            .map_err(|s| error_of(node, s))?
            .into_inner();
        Ok(ExecOutput {
            code: r.code,
            signal: r.signal,
            timed_out: r.timed_out,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    async fn progress(&self, node: &str, id: &str) -> Option<String> {
        let mut client = self.client(node).await.ok()?;
        client
            .progress(pb::ProgressRequest { id: id.into() })
            .await
            .ok()?
            .into_inner()
            .text
    }

    async fn remove_volume(&self, node: &str, name: &str) -> Result<(), String> {
        let mut client = self.client(node).await.map_err(|e| e.to_string())?;
        client
            .remove_volume(pb::RemoveVolumeRequest { name: name.into() })
            .await
            .map(|_| ())
            .map_err(|e| format!("node {node}: {}", e.message()))
    }
}
