//! The store over gRPC: a store service (`StoreService`, in [`super::cluster::serve`]) serves a manager's store to authenticated callers;
//! [`RemoteStore`] is an [`orch_core::store::Store`] that talks to it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

/// How long a read of one key, a transaction or a revision may take at one manager before
/// the next is asked: a manager cut off from the network is left this fast.
const CALL_LIMIT: Duration = Duration::from_millis(1500);

/// How long a list may take (it may carry every object of a large cluster); the manager must
/// first answer a revision within [`CALL_LIMIT`], so one whose store hangs is left as fast.
const LIST_LIMIT: Duration = Duration::from_secs(60);

/// How long a watch may take to start.
const WATCH_LIMIT: Duration = Duration::from_secs(2);

/// How long a watch of everything may deliver nothing while a revision this store wrote is
/// still missing from it, before it is ended as stalled (a manager whose etcd member froze
/// keeps its connection, but its watch goes quiet): the cache then lists and watches again,
/// at a manager that answers.
const WATCH_STALL: Duration = Duration::from_secs(2);

/// Makes the channel to a manager's address (with the caller's credentials; see
/// [`super::cluster::dialer`]).
pub type Dialer = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

type Client = pb::store_client::StoreClient<Channel>;

/// A [`Store`] on the cluster's managers, reached over gRPC (mutual TLS in a cluster). It
/// uses one manager at a time; a call that finds it unreachable (or its store unavailable)
/// goes to the next, which is used from then on: every manager serves the same store, so
/// revisions carry over (a watch cut by a manager's death ends with an error, and the cache
/// lists and watches again, reaching another). Channels reconnect by themselves; while no
/// manager answers, calls fail with [`StoreError::Unavailable`], which the engine retries.
pub struct RemoteStore {
    managers: std::sync::RwLock<Managers>,
    dialer: std::sync::RwLock<Option<Dialer>>,
    /// The highest revision a write through this store made: a watch of everything must
    /// deliver it soon.
    written: Arc<std::sync::atomic::AtomicU64>,
}

/// The managers known, each with its client, and the one in use.
struct Managers {
    clients: Vec<(String, Client)>,
    current: usize,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("managers", &self.managers())
            .finish()
    }
}

fn client_on(channel: Channel) -> Client {
    pb::store_client::StoreClient::new(channel)
        .max_decoding_message_size(super::MAX_MESSAGE)
        .max_encoding_message_size(super::MAX_MESSAGE)
}

impl RemoteStore {
    /// A store over `channel` (see [`super::cluster::channel`]) to one manager; `endpoint`
    /// names it in errors.
    pub fn new(channel: Channel, endpoint: &str) -> RemoteStore {
        RemoteStore {
            managers: std::sync::RwLock::new(Managers {
                clients: vec![(endpoint.to_string(), client_on(channel))],
                current: 0,
            }),
            dialer: std::sync::RwLock::new(None),
            written: Default::default(),
        }
    }

    /// A store on the managers at `addrs` (tried in this order; at least one), each reached
    /// through a channel `dialer` makes.
    pub fn with_dialer(addrs: &[String], dialer: Dialer) -> Result<RemoteStore, String> {
        let clients = dial_all(addrs, &dialer, &[])?;
        if clients.is_empty() {
            return Err("no manager address given".into());
        }
        Ok(RemoteStore {
            managers: std::sync::RwLock::new(Managers {
                clients,
                current: 0,
            }),
            dialer: std::sync::RwLock::new(Some(dialer)),
            written: Default::default(),
        })
    }

    /// The managers' addresses, the one in use first.
    pub fn managers(&self) -> Vec<String> {
        let m = self.managers.read().unwrap_or_else(|p| p.into_inner());
        let n = m.clients.len();
        (0..n)
            .map(|i| m.clients[(m.current + i) % n].0.clone())
            .collect()
    }

    /// The address of the manager in use.
    pub fn current(&self) -> String {
        let m = self.managers.read().unwrap_or_else(|p| p.into_inner());
        m.clients[m.current % m.clients.len()].0.clone()
    }

    /// Replaces the managers known by `addrs` (an empty list changes nothing); the one in use
    /// stays in use while it is listed. Needs a dialer ([`RemoteStore::with_dialer`]).
    pub fn set_managers(&self, addrs: &[String]) -> Result<(), String> {
        if addrs.is_empty() {
            return Ok(());
        }
        let Some(dialer) = self.dialer() else {
            return Err("this store was made for one manager (no dialer)".into());
        };
        let mut m = self.managers.write().unwrap_or_else(|p| p.into_inner());
        if m.clients.iter().map(|(a, _)| a).eq(addrs.iter()) {
            return Ok(());
        }
        let current = m.clients[m.current % m.clients.len()].0.clone();
        let clients = dial_all(addrs, &dialer, &m.clients)?;
        m.current = clients.iter().position(|(a, _)| *a == current).unwrap_or(0);
        m.clients = clients;
        Ok(())
    }

    /// Dials every manager again with `dialer` (new credentials after a renewal): new
    /// requests use the new channels; requests and watches under way finish on the old ones.
    pub fn set_dialer(&self, dialer: Dialer) -> Result<(), String> {
        let mut m = self.managers.write().unwrap_or_else(|p| p.into_inner());
        let addrs: Vec<String> = m.clients.iter().map(|(a, _)| a.clone()).collect();
        m.clients = dial_all(&addrs, &dialer, &[])?;
        *self.dialer.write().unwrap_or_else(|p| p.into_inner()) = Some(dialer);
        Ok(())
    }

    /// Sends new requests over `channel` to the manager in use (after a certificate renewal
    /// of a store made with [`RemoteStore::new`]); requests and watches under way finish on
    /// the old one.
    pub fn set_channel(&self, channel: Channel) {
        let mut m = self.managers.write().unwrap_or_else(|p| p.into_inner());
        let at = m.current % m.clients.len();
        m.clients[at].1 = client_on(channel);
    }

    fn dialer(&self) -> Option<Dialer> {
        self.dialer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` on the manager in use, then on each other in turn while the one tried is
    /// unreachable, does not answer within `limit` or its store is unavailable; the first that
    /// answers is used from then on.
    async fn on_managers<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let (clients, first) = {
            let m = self.managers.read().unwrap_or_else(|p| p.into_inner());
            (m.clients.clone(), m.current % m.clients.len())
        };
        let n = clients.len();
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let (addr, client) = &clients[at];
            let answer = match tokio::time::timeout(limit, f(client.clone())).await {
                Ok(a) => a,
                Err(_) => Err(Status::unavailable(format!("no answer within {limit:?}"))),
            };
            match answer {
                Ok(v) => {
                    if i > 0 {
                        let mut m = self.managers.write().unwrap_or_else(|p| p.into_inner());
                        if let Some(j) = m.clients.iter().position(|(a, _)| a == addr) {
                            m.current = j;
                        }
                        tracing::warn!(manager = %addr, unreachable = %failures.join("; "), "store: switched to another manager");
                    }
                    return Ok(v);
                }
                Err(s) => match error_of(s) {
                    StoreError::Unavailable(m) if n > 1 => failures.push(format!("{addr}: {m}")),
                    e => return Err(e),
                },
            }
        }
        Err(StoreError::Unavailable(format!(
            "no manager answered ({})",
            failures.join("; ")
        )))
    }
}

/// `inner` (a watch of every key from `after`), ended with an error once it has delivered
/// nothing for [`WATCH_STALL`] while a revision in `written` is missing from it.
fn stall_checked(
    inner: WatchStream,
    after: Revision,
    written: Arc<std::sync::atomic::AtomicU64>,
    manager: String,
) -> WatchStream {
    struct State {
        inner: WatchStream,
        delivered: Revision,
        behind_since: Option<tokio::time::Instant>,
        tick: tokio::time::Interval,
        ended: bool,
    }
    let state = State {
        inner,
        delivered: after,
        behind_since: None,
        tick: tokio::time::interval(WATCH_STALL / 8),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut st| {
        let (written, manager) = (written.clone(), manager.clone());
        async move {
            if st.ended {
                return None;
            }
            loop {
                tokio::select! {
                    biased;
                    item = st.inner.next() => {
                        match item {
                            Some(Ok(b)) => {
                                st.delivered = st.delivered.max(b.revision);
                                return Some((Ok(b), st));
                            }
                            Some(Err(e)) => {
                                st.ended = true;
                                return Some((Err(e), st));
                            }
                            None => return None,
                        }
                    }
                    _ = st.tick.tick() => {
                        let w = written.load(std::sync::atomic::Ordering::Relaxed);
                        if w <= st.delivered {
                            st.behind_since = None;
                            continue;
                        }
                        let since = *st.behind_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= WATCH_STALL {
                            st.ended = true;
                            let e = StoreError::Unavailable(format!(
                                "the watch at manager {manager} stalled: nothing past revision {} for {WATCH_STALL:?}, though revision {w} was written",
                                st.delivered
                            ));
                            return Some((Err(e), st));
                        }
                    }
                }
            }
        }
    }))
}

/// Clients for `addrs` (in order, duplicates dropped), reusing those of `known`.
fn dial_all(
    addrs: &[String],
    dialer: &Dialer,
    known: &[(String, Client)],
) -> Result<Vec<(String, Client)>, String> {
    let mut out: Vec<(String, Client)> = Vec::new();
    for a in addrs {
        if out.iter().any(|(b, _)| b == a) {
            continue;
        }
        let client = match known.iter().find(|(b, _)| b == a) {
            Some((_, c)) => c.clone(),
            None => client_on(dialer(a).map_err(|e| format!("manager {a}: {e}"))?),
        };
        out.push((a.clone(), client));
    }
    Ok(out)
}

#[async_trait]
impl Store for RemoteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .on_managers(CALL_LIMIT, |mut c| {
                let key = key.to_string();
                async move { c.get(pb::GetRequest { key }).await }
            })
            .await?;
        Ok(r.into_inner().kv.map(kv_from_pb))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let r = self
            .on_managers(LIST_LIMIT, |mut c| {
                let prefix = prefix.to_string();
                async move {
                    match tokio::time::timeout(CALL_LIMIT, c.revision(pb::RevisionRequest {})).await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(s)) => return Err(s),
                        Err(_) => {
                            return Err(Status::unavailable(format!(
                                "no answer within {CALL_LIMIT:?}"
                            )))
                        }
                    }
                    c.list(pb::ListRequest { prefix }).await
                }
            })
            .await?
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
                what: format!("a transaction to {}", self.current()),
                size,
                limit: super::MAX_MESSAGE - 64 * 1024,
            });
        }
        let writes = ops.iter().any(|o| !matches!(o, Op::Check { .. }));
        let ops: Vec<pb::Op> = ops.into_iter().map(op_to_pb).collect();
        // Sent again to another manager only when the one tried could not be reached or its
        // store was unavailable: every write is a compare-and-swap, so one that did land
        // there fails its compare here, as any lost race does.
        let r = self
            .on_managers(CALL_LIMIT, |mut c| {
                let ops = ops.clone();
                async move { c.txn(pb::TxnRequest { ops }).await }
            })
            .await?;
        let revision = r.into_inner().revision;
        if writes {
            self.written
                .fetch_max(revision, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(revision)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let stream = self
            .on_managers(WATCH_LIMIT, |mut c| {
                let prefix = prefix.to_string();
                async move { c.watch(pb::WatchRequest { prefix, after }).await }
            })
            .await?
            .into_inner();
        let stream: WatchStream = Box::pin(stream.map(|b| match b {
            Ok(b) => batch_from_pb(b),
            Err(s) => Err(error_of(s)),
        }));
        if prefix != "/" && !prefix.is_empty() {
            return Ok(stream);
        }
        Ok(stall_checked(
            stream,
            after,
            self.written.clone(),
            self.current(),
        ))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .on_managers(CALL_LIMIT, |mut c| async move {
                c.revision(pb::RevisionRequest {}).await
            })
            .await?;
        Ok(r.into_inner().revision)
    }

    fn max_txn_ops(&self) -> usize {
        // The manager's store may allow fewer; 128 keeps a batch of replica status writes
        // well under the message limit.
        128
    }
}
