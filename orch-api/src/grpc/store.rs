//! The store over gRPC: a store service (`StoreService`, in [`super::cluster::serve`]) serves a manager's store to authenticated callers;
//! [`RemoteStore`] is an [`orch_core::store::Store`] that talks to it.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use orch_core::store::{KeyValue, Op, Revision, Store, StoreError, WatchStream};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::auth::{self, Identity};
use super::pb;
use super::wire::{
    batch_from_pb, batch_to_pb, error_of, kv_from_pb, kv_to_pb, op_from_pb, op_to_pb, status_of,
};

/// Serves a store to callers with a cluster certificate, checking each write against what
/// the caller's identity may do ([`auth::check_txn`]).
pub(crate) struct StoreService {
    store: Arc<dyn Store>,
    revoked: Option<Arc<dyn auth::Revocations>>,
}

impl StoreService {
    /// Serves `store`.
    pub(crate) fn new(store: Arc<dyn Store>) -> StoreService {
        StoreService {
            store,
            revoked: None,
        }
    }

    /// Refuses the nodes `revoked` names (a manager's removed nodes; their watches end at
    /// the next batch).
    pub(crate) fn revocations(mut self, revoked: Arc<dyn auth::Revocations>) -> StoreService {
        self.revoked = Some(revoked);
        self
    }

    /// The caller, refused if it is a removed node.
    fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let who = auth::identity(req)?;
        if let (Identity::Node(n), Some(m)) = (&who, &self.revoked) {
            if m.is_revoked(n) {
                return Err(auth::removed(n));
            }
        }
        Ok(who)
    }

    /// The gRPC server, with the message size limit.
    pub(crate) fn server(self) -> pb::store_server::StoreServer<StoreService> {
        pb::store_server::StoreServer::new(self)
            .max_decoding_message_size(super::MAX_MESSAGE)
            .max_encoding_message_size(super::MAX_MESSAGE)
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchBatch, Status>> + Send>>;

#[tonic::async_trait]
impl pb::store_server::Store for StoreService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let who = self.caller(&req)?;
        if let Identity::Node(node) = &who {
            if auth::is_secret_key(&req.get_ref().key) {
                auth::node_may_read_secret(&*self.store, node, &req.get_ref().key).await?;
            }
        }
        let kv = self
            .store
            .get(&req.get_ref().key)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::GetResponse {
            kv: kv.map(kv_to_pb),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let who = self.caller(&req)?;
        let (mut kvs, revision) = self
            .store
            .list(&req.get_ref().prefix)
            .await
            .map_err(status_of)?;
        if matches!(who, Identity::Node(_)) {
            // Nodes read a secret one at a time, when a replica of theirs needs it.
            kvs.retain(|kv| !auth::is_secret_key(&kv.key));
        }
        Ok(Response::new(pb::ListResponse {
            kvs: kvs.into_iter().map(kv_to_pb).collect(),
            revision,
        }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let who = self.caller(&req)?;
        let ops = req
            .into_inner()
            .ops
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        if let Identity::Node(node) = &who {
            auth::check_txn(&*self.store, node, &ops).await?;
        }
        let revision = self.store.txn(ops).await.map_err(status_of)?;
        Ok(Response::new(pb::TxnResponse { revision }))
    }

    type WatchStream = BatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<BatchStream>, Status> {
        let who = self.caller(&req)?;
        let node = matches!(who, Identity::Node(_));
        let r = req.into_inner();
        let stream = self
            .store
            .watch(&r.prefix, r.after)
            .await
            .map_err(status_of)?;
        Ok(Response::new(Box::pin(stream.map(move |b| {
            b.map(|mut b| {
                if node {
                    b.events.retain(|e| !auth::is_secret_key(e.key()));
                }
                batch_to_pb(b)
            })
            .map_err(status_of)
        }))))
    }

    async fn revision(
        &self,
        req: Request<pb::RevisionRequest>,
    ) -> Result<Response<pb::RevisionResponse>, Status> {
        self.caller(&req)?;
        let revision = self.store.revision().await.map_err(status_of)?;
        Ok(Response::new(pb::RevisionResponse { revision }))
    }
}

/// A [`Store`] on a manager, reached over gRPC (mutual TLS in a cluster). The channel
/// reconnects by itself; while the manager is unreachable calls fail with
/// [`StoreError::Unavailable`], which the engine retries.
pub struct RemoteStore {
    client: std::sync::Mutex<pb::store_client::StoreClient<Channel>>,
    endpoint: String,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl RemoteStore {
    /// A store over `channel` (see [`super::cluster::channel`]); `endpoint` names it in errors.
    pub fn new(channel: Channel, endpoint: &str) -> RemoteStore {
        RemoteStore {
            client: std::sync::Mutex::new(Self::client_on(channel)),
            endpoint: endpoint.to_string(),
        }
    }

    fn client_on(channel: Channel) -> pb::store_client::StoreClient<Channel> {
        pb::store_client::StoreClient::new(channel)
            .max_decoding_message_size(super::MAX_MESSAGE)
            .max_encoding_message_size(super::MAX_MESSAGE)
    }

    /// Sends new requests over `channel` (after a certificate renewal); requests and
    /// watches under way finish on the old one.
    pub fn set_channel(&self, channel: Channel) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Self::client_on(channel);
    }

    fn client(&self) -> pb::store_client::StoreClient<Channel> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl Store for RemoteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .client()
            .get(pb::GetRequest { key: key.into() })
            .await
            .map_err(error_of)?;
        Ok(r.into_inner().kv.map(kv_from_pb))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let r = self
            .client()
            .list(pb::ListRequest {
                prefix: prefix.into(),
            })
            .await
            .map_err(error_of)?
            .into_inner();
        Ok((r.kvs.into_iter().map(kv_from_pb).collect(), r.revision))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let size: usize = ops
            .iter()
            .map(|o| match o {
                Op::Create { key, value } | Op::Update { key, value, .. } => {
                    key.len() + value.len()
                }
                Op::Delete { key, .. } | Op::Check { key, .. } => key.len(),
            })
            .sum();
        if size > super::MAX_MESSAGE - 64 * 1024 {
            return Err(StoreError::TooLarge {
                what: format!("a transaction to {}", self.endpoint),
                size,
                limit: super::MAX_MESSAGE - 64 * 1024,
            });
        }
        let r = self
            .client()
            .txn(pb::TxnRequest {
                ops: ops.into_iter().map(op_to_pb).collect(),
            })
            .await
            .map_err(error_of)?;
        Ok(r.into_inner().revision)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let stream = self
            .client()
            .watch(pb::WatchRequest {
                prefix: prefix.into(),
                after,
            })
            .await
            .map_err(error_of)?
            .into_inner();
        Ok(Box::pin(stream.map(|b| match b {
            Ok(b) => batch_from_pb(b),
            Err(s) => Err(error_of(s)),
        })))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .client()
            .revision(pb::RevisionRequest {})
            .await
            .map_err(error_of)?;
        Ok(r.into_inner().revision)
    }

    fn max_txn_ops(&self) -> usize {
        // The manager's store may allow fewer; 128 keeps a batch of replica status writes
        // well under the message limit.
        128
    }
}
