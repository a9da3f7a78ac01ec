//! [`EtcdStore`]: a [`Store`] kept in an etcd v3 cluster, a thin mapping of the `Store`
//! contract onto etcd's revisions, transactions and watches; [`Election`] (leader election
//! over an etcd lease and key, an [`Elector`](orch_core::leader::Elector)) and [`EtcdAdmin`]
//! (members, health, leadership moves) over the same connection.
//!
//! Built only with the cargo feature `etcd` of `orch-store` (off by default), because the
//! `etcd-client` crate compiles etcd's protobuf definitions and needs `protoc` at build time
//! (Debian: `apt-get install protobuf-compiler`).
//!
//! Mapping:
//! - every orch key lives at `<prefix><key>` (e.g. `/orch/services/default/web`);
//! - an orch revision is the etcd revision (`create_revision`, `mod_revision`, header revision);
//!   revisions are shared by every user of the cluster, so they rise by more than one when
//!   others write too;
//! - [`Store::txn`] is one etcd transaction whose compares guard every operation; when it
//!   fails, its else-branch reads the keys back so the error names the first failing op;
//! - etcd limits a request to 1.5 MiB (`--max-request-bytes`) and a transaction to 128
//!   operations (`--max-txn-ops`); a transaction over [`MAX_TXN_BYTES`] or [`MAX_TXN_OPS`] fails
//!   with [`StoreError::TooLarge`] before it is sent (a transaction must stay atomic, so it is
//!   never split);
//! - the prefix is a plain string prefix: pick one that no other etcd user's keys start with
//!   (`/orch` also matches `/orchestra`), since `list("")` and `watch("", ..)` range over it;
//! - a watch from a compacted revision fails with [`StoreError::Compacted`] up front (the
//!   store reads at that revision first); a watch from 0 on a compacted cluster, or one that
//!   etcd compacts under, ends with it instead;
//! - a watch asks etcd for `prev_kv` (so deletes carry the last value) and progress
//!   notifications; it ends with [`StoreError::Unavailable`] when the connection drops.
//!
//! Quorum: every request carries etcd's `hasleader` metadata (the client's "require leader"),
//! so a member without a leader refuses at once instead of waiting, and ends the watches it
//! serves when it loses its leader (after about three election timeouts) instead of leaving
//! them silent. Such failures, and requests that wait past a second while etcd reports no
//! leader, are [`StoreError::Unavailable`] with the message `etcd at ENDPOINTS has no quorum
//! (no leader): ...`.
//!
//! Several members: the client balances requests over the endpoints, and keeps choosing one
//! whose member died. A task per store asks every endpoint's status every 0.5 s and keeps
//! the requests to the members that answer with a leader (those that answer when none has
//! one; all when none answers), so a dead or frozen member is out of use within about 1.5 s
//! and back once it answers ([`EtcdStore::endpoints_in_use`]). A request that never left (no
//! connection) is sent again. A request still waiting after a second fails
//! ([`StoreError::Unavailable`]; a write's outcome is then unknown, as after any timeout)
//! when etcd has no leader, has elected a new one since (a proposal forwarded to a dead
//! leader is lost, and etcd would time it out only after 5 s), or a member stopped
//! answering meanwhile (the request may be waiting on it); reads are then sent once more.
//! When a member stops answering (out of use; for a store of one endpoint, two status
//! checks unanswered) every watch of the store ends with [`StoreError::Unavailable`], since
//! one on that member would stay silent until its connection timed out; consumers watch
//! again from their last revision. HTTP/2 pings go only while a stream is open and every 10
//! s: etcd closes connections that ping more often than every 5 s (GOAWAY
//! `too_many_pings`), which would break the watches on them.
//!
//! TLS: [`EtcdStore::connect_with`] takes an [`EtcdTls`] (the CA that signed the members'
//! certificates and the client's certificate and key, in PEM) for `https://` endpoints, with
//! rustls' ring provider as orch-api's gRPC uses.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;
use orch_core::store::{
    KeyValue, Op, Revision, Store, StoreError, WatchBatch, WatchEvent, WatchStream,
};

use crate::compact::Compact;

mod admin;
mod election;

pub use admin::{initial_cluster, EndpointStatus, EtcdAdmin, Member};
pub use election::{Election, ElectionConfig};

/// Most operations etcd accepts in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Largest encoded transaction sent, below etcd's default request limit of 1.5 MiB
/// (`--max-request-bytes`), leaving room for framing.
pub const MAX_TXN_BYTES: usize = 1_400 * 1024;

/// How long one request may take before the store counts as unavailable.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the check for a leader after a timed-out request may take.
const LEADER_PROBE: Duration = Duration::from_secs(1);

/// How long a request waits before the store starts asking etcd whether it has a leader.
const LEADERLESS_AFTER: Duration = Duration::from_secs(1);

/// How often a request that never left (no connection) is sent again, on top of its attempts.
const UNSENT_RETRIES: usize = 3;

/// Client TLS for etcd's client port, in PEM: the CA that signed the members' serving
/// certificates, and the client's own certificate and key (etcd's `--client-cert-auth`).
/// Empty `cert_pem` and `key_pem` connect without a client certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate(s) the members' certificates must chain to.
    pub ca_pem: String,
    /// The client certificate (chain).
    pub cert_pem: String,
    /// The client certificate's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"(redacted)")
            .finish()
    }
}

/// A [`Store`] backed by etcd v3.
#[derive(Clone)]
pub struct EtcdStore {
    pub(crate) client: Client,
    pub(crate) prefix: Arc<str>,
    pub(crate) endpoints: Arc<str>,
    tls: Option<Arc<EtcdTls>>,
    /// What the observing task saw; it stops when every clone of the store is dropped.
    health: Arc<Health>,
}

/// What [`observe`] keeps up to date for a store.
#[derive(Debug)]
pub(crate) struct Health {
    /// The store's endpoints (full URLs).
    endpoints: Vec<String>,
    /// The highest raft term seen lately (0: none yet).
    term: std::sync::atomic::AtomicU64,
    /// Per endpoint, whether the client balances requests over it.
    in_use: std::sync::Mutex<Vec<bool>>,
    /// Counts outages: an endpoint taken out of use, or the only one not answering. Watches
    /// end on each (the ones on that member would stay silent until the connection times out).
    outages: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`) and checks that it
    /// answers; orch keys are stored beneath `prefix` (e.g. `/orch`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect_with(endpoints, prefix, None).await
    }

    /// [`EtcdStore::connect`] with client TLS: with `tls`, every endpoint must be `https://`
    /// (or `HOST:PORT`, which then means https); without it, `http://` (or `HOST:PORT`).
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        tls: Option<EtcdTls>,
    ) -> Result<EtcdStore, StoreError> {
        // Full URLs, so the endpoint tending below names them as the client does.
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| match e.contains("://") {
                true => e.clone(),
                false => format!("{scheme}://{e}"),
            })
            .collect();
        let joined: Arc<str> = endpoints.join(",").into();
        let tls = tls.map(Arc::new);
        let options = connect_options(&joined, tls.as_deref(), true)?;
        let client = connect_client(&joined, &endpoints, options).await?;
        let health = Arc::new(Health {
            in_use: std::sync::Mutex::new(vec![true; endpoints.len()]),
            endpoints,
            term: Default::default(),
            outages: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(observe(
            Arc::downgrade(&health),
            client.clone(),
            tls.clone(),
        ));
        let store = EtcdStore {
            client,
            prefix: prefix.into(),
            endpoints: joined,
            tls,
            health,
        };
        store.revision().await?;
        Ok(store)
    }

    /// The endpoints this store was connected to, comma-separated (as errors name them).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Changes on every outage of a member (see [`Health::outages`]).
    pub(crate) fn outages(&self) -> tokio::sync::watch::Receiver<u64> {
        self.health.outages.subscribe()
    }

    /// The endpoints requests go to now: of several, those whose members answer with a
    /// leader (see the module docs).
    pub fn endpoints_in_use(&self) -> Vec<String> {
        let in_use = self.health.in_use.lock().unwrap_or_else(|e| e.into_inner());
        self.health
            .endpoints
            .iter()
            .zip(in_use.iter())
            .filter(|(_, used)| **used)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// A client of `endpoints` with this store's TLS settings and no leader requirement
    /// (for status and member calls that must reach a member without a leader too).
    pub(crate) async fn client_of(&self, endpoints: &[String]) -> Result<Client, StoreError> {
        let joined = endpoints.join(",");
        let options = connect_options(&joined, self.tls.as_deref(), false)?;
        connect_client(&joined, endpoints, options).await
    }

    /// The prefix every orch key is stored under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let raw = String::from_utf8_lossy(kv.key());
        let key = raw
            .strip_prefix(&*self.prefix)
            .ok_or_else(|| StoreError::Corrupt {
                key: raw.to_string(),
                reason: format!("key outside prefix {}", self.prefix),
            })?
            .to_string();
        Ok(KeyValue {
            key,
            value: kv.value().into(),
            create_revision: rev(kv.create_revision()),
            mod_revision: rev(kv.mod_revision()),
        })
    }

    /// Runs the read `f` with a client, bounded by [`REQUEST_TIMEOUT`]; retries once when
    /// etcd is unavailable (the client reconnects on its own).
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempt(2, f).await
    }

    /// Runs `f` up to `attempts` times while etcd is unavailable, each bounded by
    /// [`REQUEST_TIMEOUT`]; a request that provably never left (no connection could be made)
    /// is sent again without counting. A request that waits past a second while etcd reports
    /// no leader, or that timed out (here or in etcd) when etcd then says it has no leader,
    /// fails as "no quorum".
    pub(crate) async fn attempt<T, F, Fut>(&self, attempts: usize, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        let mut unsent = UNSENT_RETRIES;
        let mut attempt = 0;
        while attempt < attempts {
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(REQUEST_TIMEOUT, f(self.client.clone())) => outcome,
                e = self.leaderless() => {
                    last = Some(e);
                    attempt += 1;
                    continue;
                }
            };
            match outcome {
                Err(_) => {
                    last = Some(
                        self.explain_timeout(&format!(
                            "request timed out after {REQUEST_TIMEOUT:?}"
                        ))
                        .await,
                    )
                }
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_unsent(&e) && unsent > 0 => {
                    unsent -= 1;
                    last = Some(map_err(&self.endpoints, e));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(Err(e)) if is_server_timeout(&e) => {
                    last = Some(self.explain_timeout(&grpc_message(&e)).await)
                }
                Ok(Err(e)) => match map_err(&self.endpoints, e) {
                    e @ StoreError::Unavailable(_) => last = Some(e),
                    e => return Err(e),
                },
            }
            attempt += 1;
        }
        Err(last.unwrap_or_else(|| unavailable(&self.endpoints, "no answer")))
    }

    /// Resolves with the error to fail a request with that has waited [`LEADERLESS_AFTER`]
    /// when etcd then reports no leader ("no quorum"), or a raft term newer than the one seen
    /// before the request (an election: a proposal forwarded to the old leader is lost, and
    /// etcd would only time it out after 5 s), or when a member stopped answering meanwhile
    /// (its endpoint taken out of use: a request sent there would wait for the connection to
    /// time out); checked every half second.
    async fn leaderless(&self) -> StoreError {
        use std::sync::atomic::Ordering;
        let before = self.health.term.load(Ordering::Relaxed);
        let outages = *self.health.outages.borrow();
        tokio::time::sleep(LEADERLESS_AFTER).await;
        loop {
            if *self.health.outages.borrow() != outages {
                return unavailable(
                    &self.endpoints,
                    "an etcd member stopped answering while the request waited (the store no longer uses it); the request may have gone there (a write may or may not have been applied)",
                );
            }
            let mut client = self.client.clone();
            match tokio::time::timeout(LEADER_PROBE, client.status()).await {
                Ok(Ok(status)) if status.leader() == 0 => {
                    return no_quorum(&self.endpoints, "the member asked reports no leader")
                }
                Ok(Ok(status)) if before > 0 && status.raft_term() > before => {
                    return unavailable(
                        &self.endpoints,
                        format!(
                            "etcd elected a new leader (raft term {before} to {}) while the request waited; it was most likely lost with the old leader (a write may or may not have been applied)",
                            status.raft_term()
                        ),
                    )
                }
                Ok(Err(e)) if is_no_leader(&e) => return no_quorum(&self.endpoints, grpc_message(&e)),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The error for a request that timed out: "no quorum" when etcd reports no leader (a
    /// member refuses `hasleader` requests then, or its status names leader 0), else a
    /// plain timeout.
    pub(crate) async fn explain_timeout(&self, what: &str) -> StoreError {
        let mut client = self.client.clone();
        match tokio::time::timeout(LEADER_PROBE, client.status()).await {
            Ok(Ok(status)) if status.leader() == 0 => no_quorum(&self.endpoints, what),
            Ok(Err(e)) if is_no_leader(&e) => no_quorum(&self.endpoints, what),
            Ok(Ok(_)) => unavailable(&self.endpoints, what),
            Ok(Err(e)) => unavailable(&self.endpoints, format!("{what}; then: {e}")),
            Err(_) => unavailable(
                &self.endpoints,
                format!("{what}; no status answer either (etcd is unreachable, or has no quorum)"),
            ),
        }
    }

    /// The oldest revision a watch can still start from, found by watching from revision 1
    /// (etcd cancels it at once, naming its compaction revision).
    async fn compact_revision(&self) -> Result<Revision, StoreError> {
        let key = self.etcd_key("");
        let mut stream = self
            .call(|mut c| {
                let key = key.clone();
                async move {
                    c.watch(
                        key,
                        Some(WatchOptions::new().with_prefix().with_start_revision(1)),
                    )
                    .await
                }
            })
            .await?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, stream.message())
                .await
                .map_err(|_| unavailable(&self.endpoints, "no answer to a watch"))?
                .map_err(|e| map_err(&self.endpoints, e))?;
            match msg {
                Some(resp) if resp.compact_revision() > 0 => {
                    return Ok(rev(resp.compact_revision()))
                }
                Some(resp) if !resp.events().is_empty() || resp.canceled() => return Ok(1),
                Some(_) => continue,
                None => return Err(unavailable(&self.endpoints, "watch closed")),
            }
        }
    }
}

pub(crate) fn rev(r: i64) -> Revision {
    r.max(0) as Revision
}

/// HTTP/2 keepalive pings (interval, timeout), only while a stream (a watch, a lease
/// keepalive) is open: etcd closes a connection that pings more often than every 5 s
/// (`--grpc-keepalive-min-time`) — or at all without a stream — with GOAWAY "too_many_pings",
/// breaking the watches on it.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));

/// How often the endpoints of a store over several members are checked.
const TEND_INTERVAL: Duration = Duration::from_millis(500);

/// Watches the cluster for a store, every [`TEND_INTERVAL`] until the store (every clone)
/// is dropped: records the raft term (for [`EtcdStore::attempt`]'s watchdog) and, over
/// several endpoints, keeps the client's balanced endpoints to the members worth asking —
/// those that answer and have a leader; when none has a leader, those that answer (so
/// requests fail at once with "no quorum" instead of on a dead connection); when none
/// answers, all. The client's balancer keeps choosing an endpoint whose member died (each
/// request there fails to connect, or waits out the connect timeout on a host that is
/// gone), so a dead member is taken out within about a second and put back once it answers.
async fn observe(health: std::sync::Weak<Health>, client: Client, tls: Option<Arc<EtcdTls>>) {
    use std::sync::atomic::Ordering;
    let Some(endpoints) = health.upgrade().map(|h| h.endpoints.clone()) else {
        return;
    };
    let mut probes: Vec<Option<Client>> = vec![None; endpoints.len()];
    // The only endpoint's status went unanswered this many times in a row.
    let mut silent = 0;
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(TEND_INTERVAL).await;
        }
        let Some(health) = health.upgrade() else {
            return;
        };
        if endpoints.len() == 1 {
            let mut c = client.clone();
            match tokio::time::timeout(LEADER_PROBE, c.status()).await {
                Ok(Ok(status)) => {
                    health.term.fetch_max(status.raft_term(), Ordering::Relaxed);
                    silent = 0;
                }
                // It answers, without a leader.
                Ok(Err(e)) if is_no_leader(&e) => silent = 0,
                _ => {
                    silent += 1;
                    if silent == 2 {
                        tracing::debug!(endpoint = %endpoints[0], "etcd: the member does not answer");
                        health.outages.send_modify(|n| *n += 1);
                    }
                }
            }
            continue;
        }
        // Per endpoint: None (no answer), Some((has a leader, raft term)).
        let answers: Vec<Option<(bool, u64)>> =
            futures::future::join_all(endpoints.iter().zip(probes.iter_mut()).map(
                |(endpoint, probe)| async {
                    if probe.is_none() {
                        let options = connect_options(endpoint, tls.as_deref(), false).ok()?;
                        *probe = connect_client(endpoint, std::slice::from_ref(endpoint), options)
                            .await
                            .ok();
                    }
                    let mut c = probe.clone()?;
                    match tokio::time::timeout(LEADER_PROBE, c.status()).await {
                        Ok(Ok(status)) => Some((status.leader() != 0, status.raft_term())),
                        _ => None,
                    }
                },
            ))
            .await;
        if let Some(term) = answers.iter().flatten().filter(|a| a.0).map(|a| a.1).max() {
            health.term.fetch_max(term, Ordering::Relaxed);
        }
        let led: Vec<bool> = answers.iter().map(|a| a.is_some_and(|a| a.0)).collect();
        let answering: Vec<bool> = answers.iter().map(Option::is_some).collect();
        let wanted = if led.contains(&true) {
            led
        } else if answering.contains(&true) {
            answering
        } else {
            vec![true; endpoints.len()]
        };
        let in_use = health
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Additions first, so the set is never empty.
        let changes = (0..endpoints.len())
            .filter(|&i| !in_use[i] && wanted[i])
            .chain((0..endpoints.len()).filter(|&i| in_use[i] && !wanted[i]))
            .collect::<Vec<_>>();
        for i in changes {
            let endpoint = &endpoints[i];
            let changed = match wanted[i] {
                true => client.add_endpoint(endpoint).await,
                false => client.remove_endpoint(endpoint).await,
            };
            match changed {
                Ok(()) => {
                    tracing::debug!(%endpoint, use_it = wanted[i], "etcd: endpoint set changed");
                    health.in_use.lock().unwrap_or_else(|e| e.into_inner())[i] = wanted[i];
                    if !wanted[i] {
                        health.outages.send_modify(|n| *n += 1);
                    }
                }
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "etcd: cannot change the endpoint set")
                }
            }
        }
    }
}

/// The client options: timeouts, HTTP/2 keepalive, TLS (checked against the endpoints'
/// schemes) and whether every request requires a leader.
fn connect_options(
    endpoints: &str,
    tls: Option<&EtcdTls>,
    require_leader: bool,
) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(KEEPALIVE.0, KEEPALIVE.1)
        .with_keep_alive_while_idle(false)
        .with_require_leader(require_leader);
    for endpoint in endpoints.split(',') {
        match (tls.is_some(), endpoint.split_once("://")) {
            (true, Some(("http", _))) => {
                return Err(StoreError::Other(
                    format!("etcd endpoint {endpoint} is http:// but TLS is configured: use https://").into(),
                ))
            }
            (false, Some(("https", _))) => {
                return Err(StoreError::Other(
                    format!("etcd endpoint {endpoint} is https:// but no TLS is configured (CA, client certificate and key)").into(),
                ))
            }
            (_, Some(("http" | "https", _))) | (_, None) => {}
            (_, Some((scheme, _))) => {
                return Err(StoreError::Other(
                    format!("etcd endpoint {endpoint}: unknown scheme {scheme}:// (use http:// or https://)").into(),
                ))
            }
        }
    }
    if let Some(tls) = tls {
        let mut config = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
        match (tls.cert_pem.is_empty(), tls.key_pem.is_empty()) {
            (true, true) => {}
            (false, false) => {
                config = config.identity(etcd_client::Identity::from_pem(
                    &tls.cert_pem,
                    &tls.key_pem,
                ))
            }
            _ => {
                return Err(StoreError::Other(
                    "etcd TLS: a client certificate needs its key and a key its certificate (give both or neither)".into(),
                ))
            }
        }
        options = options.with_tls(config);
    }
    Ok(options)
}

async fn connect_client(
    joined: &str,
    endpoints: &[String],
    options: ConnectOptions,
) -> Result<Client, StoreError> {
    if endpoints.is_empty() {
        return Err(StoreError::Other("no etcd endpoints given".into()));
    }
    tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(options)))
        .await
        .map_err(|_| unavailable(joined, "connect timed out"))?
        .map_err(|e| map_err(joined, e))
}

pub(crate) fn unavailable(endpoints: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd at {endpoints}: {what}"))
}

pub(crate) fn no_quorum(endpoints: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "etcd at {endpoints} has no quorum (no leader): {what}; etcd serves again once a majority of its members are up and connected"
    ))
}

fn grpc_message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        e => e.to_string(),
    }
}

/// etcd's "no leader" refusal (`etcdserver: no leader`), sent for `hasleader` requests.
fn is_no_leader(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("no leader"))
}

/// No connection could be made, so the request was never sent (and may be sent again, a
/// write too).
fn is_unsent(e: &etcd_client::Error) -> bool {
    let message = match e {
        // gRPC status 14, unavailable.
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 14 => s.message(),
        _ => return false,
    };
    [
        "tcp connect error",
        "Connection refused",
        "error trying to connect",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// etcd gave up waiting for a proposal or a read to be committed (`etcdserver: request
/// timed out...`), which happens when it has no quorum.
fn is_server_timeout(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("request timed out"))
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

pub(crate) fn map_err(endpoints: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match &e {
        E::TransportError(_) | E::IoError(_) => unavailable(endpoints, e),
        E::GRpcStatus(s) if is_no_leader(&e) => no_quorum(endpoints, s.message()),
        E::GRpcStatus(s) if TRANSIENT_CODES.contains(&(s.code() as i32)) => {
            match ["transport error", "http2 error", "operation was canceled"]
                .contains(&s.message())
            {
                true => unavailable(
                    endpoints,
                    format!(
                        "{}: the connection to an etcd member broke while the request was on it (a write may or may not have been applied)",
                        s.message()
                    ),
                ),
                false => unavailable(endpoints, s.message()),
            }
        }
        _ => StoreError::Other(Box::new(e)),
    }
}

/// gRPC status codes that mean "try again": cancelled (1), unknown (2, e.g. a broken
/// connection), deadline exceeded (4), aborted (10), unavailable (14).
const TRANSIENT_CODES: [i32; 5] = [1, 2, 4, 10, 14];

/// The compare guarding an update or delete of `key`: it exists and, with `expected`, was
/// last written at `expected`. A missing key has mod revision 0, so `mod_revision == e`
/// proves existence for `e > 0`; `expected == Some(0)` can never hold, so its compare is
/// always false (`create_revision < 0`) and the else-branch tells which error it is.
fn guard(key: &str, expected: Option<Revision>) -> Compare {
    match expected {
        None => Compare::create_revision(key, CompareOp::Greater, 0),
        Some(0) => Compare::create_revision(key, CompareOp::Less, 0),
        Some(e) => Compare::mod_revision(key, CompareOp::Equal, e as i64),
    }
}

/// Why the transaction failed, from the keys read back in its else-branch.
fn txn_failure(ops: &[Op], current: &[Option<KeyValue>]) -> StoreError {
    for (op, existing) in ops.iter().zip(current) {
        match (op, existing) {
            (Op::Create { key, .. }, Some(_)) => {
                return StoreError::AlreadyExists { key: key.clone() }
            }
            (Op::Update { key, .. } | Op::Delete { key, .. }, None) => {
                return StoreError::NotFound { key: key.clone() }
            }
            (Op::Check { key, created }, existing)
                if existing.as_ref().map_or(0, |kv| kv.create_revision) != *created =>
            {
                return StoreError::Fenced {
                    key: key.clone(),
                    expected: *created,
                    actual: existing.as_ref().map_or(0, |kv| kv.create_revision),
                }
            }
            (Op::Update { key, expected, .. }, Some(kv))
            | (
                Op::Delete {
                    key,
                    expected: Some(expected),
                },
                Some(kv),
            ) if kv.mod_revision != *expected => {
                return StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: kv.mod_revision,
                }
            }
            _ => {}
        }
    }
    // Unreachable while etcd keeps its word: the reads ran in the same transaction as the
    // compares, so one of them must show a failing guard.
    StoreError::Other("etcd refused the transaction but every guard holds".into())
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let k = self.etcd_key(key);
        let resp = self
            .call(|mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        resp.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let k = self.etcd_key(prefix);
        let resp = self
            .call(|mut c| {
                let k = k.clone();
                async move { c.get(k, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((kvs, rev(resp.header().map_or(0, |h| h.revision()))))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        if ops.is_empty() {
            return self.revision().await;
        }
        let mut seen = HashSet::new();
        for op in &ops {
            if !seen.insert(op.key()) {
                return Err(StoreError::Other(
                    format!("transaction touches {} twice", op.key()).into(),
                ));
            }
        }
        if ops.len() > MAX_TXN_OPS {
            return Err(StoreError::TooLarge {
                what: format!(
                    "a transaction of {} operations (etcd accepts at most {MAX_TXN_OPS} operations per transaction; count in operations, not bytes)",
                    ops.len()
                ),
                size: ops.len(),
                limit: MAX_TXN_OPS,
            });
        }
        // Each op is sent as a compare, a request and a read-back: the key three times.
        let size: usize = ops
            .iter()
            .map(|op| {
                let value = match op {
                    Op::Create { value, .. } | Op::Update { value, .. } => value.len(),
                    Op::Delete { .. } | Op::Check { .. } => 0,
                };
                3 * (self.prefix.len() + op.key().len()) + value + 48
            })
            .sum();
        if size > MAX_TXN_BYTES {
            return Err(StoreError::TooLarge {
                what: "etcd transaction (etcd's default request limit is 1.5 MiB)".into(),
                size,
                limit: MAX_TXN_BYTES,
            });
        }
        // One compare per op (etcd counts compares against `--max-txn-ops` too).
        let mut compares = Vec::with_capacity(ops.len());
        let mut then = Vec::with_capacity(ops.len());
        let mut otherwise = Vec::with_capacity(ops.len());
        for op in &ops {
            let k = self.etcd_key(op.key());
            let (compare, request) = match op {
                Op::Create { value, .. } => (
                    Compare::create_revision(k.clone(), CompareOp::Equal, 0),
                    Some(TxnOp::put(k.clone(), value.clone(), None)),
                ),
                Op::Update {
                    value, expected, ..
                } => (
                    guard(&k, Some(*expected)),
                    Some(TxnOp::put(k.clone(), value.clone(), None)),
                ),
                Op::Delete { expected, .. } => {
                    (guard(&k, *expected), Some(TxnOp::delete(k.clone(), None)))
                }
                // A missing key has create revision 0, which no term's key has.
                Op::Check { created, .. } => (
                    Compare::create_revision(k.clone(), CompareOp::Equal, *created as i64),
                    None,
                ),
            };
            compares.push(compare);
            then.extend(request);
            otherwise.push(TxnOp::get(k, None));
        }
        let txn = Txn::new().when(compares).and_then(then).or_else(otherwise);
        // Sent once: a write that timed out may have committed, and a blind retry would then
        // fail its own guard. Unavailable is transient; the caller re-reads and decides.
        let resp = self
            .attempt(1, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(rev(resp.header().map_or(0, |h| h.revision())));
        }
        let current = resp
            .op_responses()
            .iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| self.to_kv(kv)).transpose(),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Err(txn_failure(&ops, &current))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // A read at `after` fails when etcd has compacted it away: report that up front.
        if after > 0 {
            let k = self.etcd_key(prefix);
            let probe = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut c = self.client.clone();
                c.get(
                    k,
                    Some(
                        GetOptions::new()
                            .with_revision(after as i64)
                            .with_count_only(),
                    ),
                )
                .await
            })
            .await
            .map_err(|_| unavailable(&self.endpoints, "request timed out"))?;
            match probe {
                Ok(_) => {}
                // Watching from a revision not reached yet is allowed: events arrive later.
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("future revision") => {}
                Err(e) if is_compacted(&e) => {
                    return Err(StoreError::Compacted {
                        requested: after,
                        oldest: self.compact_revision().await?,
                    })
                }
                Err(e) => return Err(map_err(&self.endpoints, e)),
            }
        }
        let k = self.etcd_key(prefix);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after as i64 + 1)
            .with_prev_key()
            .with_progress_notify();
        let stream = self
            .call(|mut c| {
                let k = k.clone();
                let options = options.clone();
                async move { c.watch(k, Some(options)).await }
            })
            .await?;
        let store = self.clone();
        let mut outages = self.outages();
        outages.mark_unchanged();
        let batches = futures::stream::unfold(Some((stream, outages)), move |state| {
            let store = store.clone();
            async move {
                let (mut stream, mut outages) = state?;
                loop {
                    let message = tokio::select! {
                        message = stream.message() => message,
                        _ = outages.changed() => {
                            let err = unavailable(
                                &store.endpoints,
                                "an etcd member stopped answering; watch again (the watch may have been on it)",
                            );
                            return Some((vec![Err(err)], None));
                        }
                    };
                    let resp = match message {
                        Ok(Some(resp)) => resp,
                        Ok(None) => {
                            let err = unavailable(&store.endpoints, "watch stream closed");
                            return Some((vec![Err(err)], None));
                        }
                        Err(e) => {
                            let err = match map_err(&store.endpoints, e) {
                                e @ StoreError::Unavailable(_) => e,
                                e => unavailable(&store.endpoints, e),
                            };
                            return Some((vec![Err(err)], None));
                        }
                    };
                    if resp.compact_revision() > 0 {
                        let err = StoreError::Compacted {
                            requested: after,
                            oldest: rev(resp.compact_revision()),
                        };
                        return Some((vec![Err(err)], None));
                    }
                    if resp.canceled() {
                        let err = unavailable(
                            &store.endpoints,
                            format!("watch cancelled: {}", resp.cancel_reason()),
                        );
                        return Some((vec![Err(err)], None));
                    }
                    if resp.created() && resp.events().is_empty() {
                        continue;
                    }
                    if resp.events().is_empty() {
                        let revision = rev(resp.header().map_or(0, |h| h.revision()));
                        return Some((
                            vec![Ok(WatchBatch {
                                revision,
                                events: Vec::new(),
                            })],
                            Some((stream, outages)),
                        ));
                    }
                    let mut out: Vec<Result<WatchBatch, StoreError>> = Vec::new();
                    let mut batch: Option<WatchBatch> = None;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let revision = rev(kv.mod_revision());
                        let event = match ev.event_type() {
                            EventType::Put => store.to_kv(kv).map(WatchEvent::Put),
                            EventType::Delete => match ev.prev_kv() {
                                Some(prev) => store
                                    .to_kv(prev)
                                    .map(|prev| WatchEvent::Delete { prev, revision }),
                                None => Err(StoreError::Corrupt {
                                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    reason: "delete event without its previous value (compacted?)"
                                        .into(),
                                }),
                            },
                        };
                        let event = match event {
                            Ok(e) => e,
                            Err(e) => {
                                out.extend(batch.take().map(Ok));
                                out.push(Err(e));
                                return Some((out, None));
                            }
                        };
                        match &mut batch {
                            Some(b) if b.revision == revision => b.events.push(event),
                            _ => {
                                out.extend(batch.take().map(Ok));
                                batch = Some(WatchBatch {
                                    revision,
                                    events: vec![event],
                                });
                            }
                        }
                    }
                    out.extend(batch.map(Ok));
                    return Some((out, Some((stream, outages))));
                }
            }
        })
        .flat_map(futures::stream::iter);
        Ok(batches.boxed())
    }

    fn max_txn_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let k = self.etcd_key("");
        let resp = self
            .call(|mut c| {
                let k = k.clone();
                async move {
                    c.get(k, Some(GetOptions::new().with_count_only().with_limit(1)))
                        .await
                }
            })
            .await?;
        Ok(rev(resp.header().map_or(0, |h| h.revision())))
    }
}

#[async_trait]
impl Compact for EtcdStore {
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.call(|mut c| async move { c.compact(revision as i64, None).await })
            .await?;
        Ok(())
    }
}
