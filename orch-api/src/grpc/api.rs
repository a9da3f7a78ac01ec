//! orch's API protocol over gRPC: the same requests and responses as the local socket
//! (`crate::protocol`, JSON), for administrators with a cluster certificate. Nodes are
//! refused: they speak only the store protocol.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::{self, Identity};
use super::pb;
use crate::handler::{Backend, Caller};
use crate::protocol::Request as ApiRequest;

/// Serves [`Backend`] to administrators.
pub(crate) struct ApiService {
    backend: Arc<Backend>,
}

impl ApiService {
    /// Serves `backend`.
    pub(crate) fn new(backend: Arc<Backend>) -> ApiService {
        ApiService { backend }
    }

    /// The gRPC server, with the message size limit.
    pub(crate) fn server(self) -> pb::api_server::ApiServer<ApiService> {
        pb::api_server::ApiServer::new(self)
            .max_decoding_message_size(super::MAX_MESSAGE)
            .max_encoding_message_size(super::MAX_MESSAGE)
    }
}

/// The caller of `req`: an administrator; nodes are refused.
fn admin<T>(req: &Request<T>) -> Result<Caller, Status> {
    match auth::identity(req)? {
        Identity::Admin(name) => Ok(Caller::Admin(name)),
        Identity::Node(n) => Err(Status::permission_denied(format!(
            "node {n} may not use the administrators' API"
        ))),
    }
}

fn decode(m: &pb::ApiMessage) -> Result<ApiRequest, Status> {
    serde_json::from_str(&m.json)
        .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
}

fn encode(r: &crate::protocol::Response) -> pb::ApiMessage {
    pb::ApiMessage {
        json: serde_json::to_string(r).unwrap_or_default(),
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<pb::ApiMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::api_server::Api for ApiService {
    async fn call(&self, req: Request<pb::ApiMessage>) -> Result<Response<pb::ApiMessage>, Status> {
        let caller = admin(&req)?;
        let r = decode(req.get_ref())?;
        Ok(Response::new(encode(
            &crate::handler::answer(&self.backend, &caller, r).await,
        )))
    }

    type StreamStream = Messages;

    async fn stream(&self, req: Request<pb::ApiMessage>) -> Result<Response<Messages>, Status> {
        let caller = admin(&req)?;
        let r = decode(req.get_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let mut tx = tx;
            crate::handler::answer_into(&backend, &caller, r, &mut tx).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            stream,
            |r| Ok(encode(&r)),
        ))))
    }
}
