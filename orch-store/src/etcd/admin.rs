//! [`EtcdAdmin`]: the etcd cluster itself, as the managers that run its members see it —
//! members (list, add, remove), each member's status (leader, raft term, database size,
//! errors) and moving raft leadership to another member.
//!
//! Member and status calls carry no leader requirement, so they answer from a member without
//! quorum too (that is when they matter); status is asked of each member's own client URL.
//! Member ids are etcd's (`etcdctl member list` shows them in hex).

use std::time::Duration;

use etcd_client::Client;
use orch_core::store::StoreError;
use tokio::sync::OnceCell;

use super::{map_err, no_quorum, unavailable, EtcdStore, REQUEST_TIMEOUT};

/// How long one member's status may take in [`EtcdAdmin::health`].
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`EtcdAdmin::add_member`] waits for etcd to find the cluster healthy enough.
const ADD_WAIT: Duration = Duration::from_secs(15);

/// One etcd member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// etcd's member id.
    pub id: u64,
    /// The member's name (`--name`); empty until an added member has started.
    pub name: String,
    /// Its peer URLs (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    /// Its client URLs (`--advertise-client-urls`); empty until it has started.
    pub client_urls: Vec<String>,
    /// Whether it is the raft leader now (as far as the member asked knows).
    pub is_leader: bool,
    /// Whether it is a learner (a non-voting member).
    pub is_learner: bool,
}

/// One member's status as its own client URL reports it, or why it could not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The client URL asked (empty for a member that has not started).
    pub endpoint: String,
    /// The member's id.
    pub member_id: u64,
    /// The member's name.
    pub name: String,
    /// The leader the member knows of (`None`: it has none — no quorum on its side).
    pub leader_id: Option<u64>,
    /// The member's raft term.
    pub raft_term: u64,
    /// The member's raft index.
    pub raft_index: u64,
    /// The size of its database file in bytes.
    pub db_size: i64,
    /// The etcd version it runs.
    pub version: String,
    /// Errors the member reports (alarms such as `NOSPACE`).
    pub errors: Vec<String>,
    /// Why it could not be asked (unreachable, timed out, not started); `None` when it
    /// answered.
    pub error: Option<String>,
}

impl EndpointStatus {
    /// Whether the member answered, has a leader and reports no errors.
    pub fn healthy(&self) -> bool {
        self.error.is_none() && self.leader_id.is_some() && self.errors.is_empty()
    }
}

/// Administration of the etcd cluster behind an [`EtcdStore`], over its endpoints and TLS.
pub struct EtcdAdmin {
    store: EtcdStore,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for EtcdAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAdmin")
            .field("endpoints", &self.store.endpoints)
            .finish()
    }
}

fn member_of(m: &etcd_client::Member, leader: Option<u64>) -> Member {
    Member {
        id: m.id(),
        name: m.name().to_string(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_leader: leader == Some(m.id()),
        is_learner: m.is_learner(),
    }
}

/// `--initial-cluster` for a member just added with [`EtcdAdmin::add_member`]: every
/// member's `NAME=PEER_URL`, with `name` for the new member `id` (as `etcdctl member add`
/// prints it). Start that member with `--initial-cluster-state existing`.
pub fn initial_cluster(members: &[Member], id: u64, name: &str) -> String {
    members
        .iter()
        .flat_map(|m| {
            let n = if m.id == id { name } else { m.name.as_str() };
            m.peer_urls.iter().map(move |u| format!("{n}={u}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `e` says the request never reached a member (no connection could be made).
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            // 14: unavailable.
            s.code() as i32 == 14 && s.message().contains("connect")
        }
        _ => false,
    }
}

impl EtcdAdmin {
    /// Administration over `store`'s endpoints and TLS (its own connection, made on first
    /// use, without a leader requirement).
    pub fn new(store: &EtcdStore) -> EtcdAdmin {
        EtcdAdmin {
            store: store.clone(),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<Client, StoreError> {
        let endpoints: Vec<String> = self
            .store
            .endpoints
            .split(',')
            .map(str::to_string)
            .collect();
        self.client
            .get_or_try_init(|| self.store.client_of(&endpoints))
            .await
            .cloned()
    }

    /// Runs `f` with the client over every endpoint; when that fails to connect (the
    /// channel picked a dead member: nothing was sent, so trying again is safe even for
    /// member add and remove), runs it once more against each member that answers.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        let first = match tokio::time::timeout(REQUEST_TIMEOUT, f(client)).await {
            Ok(Err(e)) if not_sent(&e) => e,
            Ok(result) => return result.map_err(|e| map_err(&self.store.endpoints, e)),
            Err(_) => {
                return Err(self
                    .store
                    .explain_timeout(&format!("request timed out after {REQUEST_TIMEOUT:?}"))
                    .await)
            }
        };
        for endpoint in self.store.endpoints_in_use() {
            let Ok(one) = self.store.client_of(std::slice::from_ref(&endpoint)).await else {
                continue;
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, f(one)).await {
                Ok(Err(e)) if not_sent(&e) => continue,
                Err(_) => continue,
                Ok(result) => return result.map_err(|e| map_err(&endpoint, e)),
            }
        }
        Err(map_err(&self.store.endpoints, first))
    }

    /// The raft leader's member id, as the member answering knows it (`None`: no leader).
    pub async fn leader_id(&self) -> Result<Option<u64>, StoreError> {
        let status = self.call(|mut c| async move { c.status().await }).await?;
        Ok(Some(status.leader()).filter(|&id| id != 0))
    }

    /// Every member, the leader marked (when a leader is known).
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let list = self
            .call(|mut c| async move { c.member_list().await })
            .await?;
        let leader = self.leader_id().await.ok().flatten();
        Ok(list
            .members()
            .iter()
            .map(|m| member_of(m, leader))
            .collect())
    }

    /// Adds a voting member that will listen at `peer_urls`; returns its id and the member
    /// list with it (for [`initial_cluster`]). Start it with `--initial-cluster-state
    /// existing` right away: until it is up, it counts against the quorum.
    pub async fn add_member(&self, peer_urls: &[String]) -> Result<(u64, Vec<Member>), StoreError> {
        if peer_urls.is_empty() {
            return Err(StoreError::Other(
                "etcd member add: no peer URL given (e.g. https://10.0.0.2:2380)".into(),
            ));
        }
        // etcd refuses to add a member ("unhealthy cluster") until the member asked has been
        // connected to every other for 5 s: wait that out.
        let deadline = tokio::time::Instant::now() + ADD_WAIT;
        let resp = loop {
            let urls = peer_urls.to_vec();
            match self
                .call(|mut c| {
                    let urls = urls.clone();
                    async move { c.member_add(urls, None).await }
                })
                .await
            {
                Err(StoreError::Unavailable(e))
                    if e.contains("unhealthy cluster") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(StoreError::Unavailable(e)) if e.contains("unhealthy cluster") => {
                    break Err(StoreError::Unavailable(format!(
                        "{e} (etcd adds a member only when every member has been connected for 5 s; still not after {ADD_WAIT:?})"
                    )))
                }
                other => break other,
            }
        }
        .map_err(|e| match e {
                StoreError::Other(e) => StoreError::Other(
                    format!(
                        "etcd member add {}: {e} (etcd refuses a member that would leave the cluster without quorum until it starts, and peer URLs already in use)",
                        peer_urls.join(",")
                    )
                    .into(),
                ),
                e => e,
            })?;
        let member = resp.member().ok_or_else(|| {
            StoreError::Other("etcd member add: the answer names no member".into())
        })?;
        let id = member.id();
        let leader = self.leader_id().await.ok().flatten();
        let members = resp
            .member_list()
            .iter()
            .map(|m| member_of(m, leader))
            .collect();
        Ok((id, members))
    }

    /// Removes member `id` from the cluster (its process stops serving on its own).
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        self.call(|mut c| async move { c.member_remove(id).await })
            .await
            .map_err(|e| match e {
                StoreError::Other(e) => {
                    StoreError::Other(format!("etcd member remove {id:x}: {e}").into())
                }
                e => e,
            })?;
        Ok(())
    }

    /// The status of one client URL (with this store's TLS).
    pub async fn status(&self, endpoint: &str) -> EndpointStatus {
        let mut out = EndpointStatus {
            endpoint: endpoint.to_string(),
            member_id: 0,
            name: String::new(),
            leader_id: None,
            raft_term: 0,
            raft_index: 0,
            db_size: 0,
            version: String::new(),
            errors: Vec::new(),
            error: None,
        };
        let asked = async {
            let mut client = self.store.client_of(&[endpoint.to_string()]).await?;
            client.status().await.map_err(|e| map_err(endpoint, e))
        };
        match tokio::time::timeout(STATUS_TIMEOUT, asked).await {
            Ok(Ok(status)) => {
                out.member_id = status.header().map_or(0, |h| h.member_id());
                out.leader_id = Some(status.leader()).filter(|&id| id != 0);
                out.raft_term = status.raft_term();
                out.raft_index = status.raft_index();
                out.db_size = status.db_size();
                out.version = status.version().to_string();
                out.errors = status.errors().to_vec();
            }
            Ok(Err(e)) => out.error = Some(e.to_string()),
            Err(_) => {
                out.error = Some(format!(
                    "etcd at {endpoint}: no status answer within {STATUS_TIMEOUT:?}"
                ))
            }
        }
        out
    }

    /// Every member's status, each asked at its first client URL (at once, each within 2
    /// s). When the member list cannot be read, the status of each of the store's endpoints.
    pub async fn health(&self) -> Vec<EndpointStatus> {
        let members = match self
            .call(|mut c| async move { c.member_list().await })
            .await
        {
            Ok(list) => list
                .members()
                .iter()
                .map(|m| member_of(m, None))
                .collect::<Vec<_>>(),
            Err(_) => {
                let endpoints: Vec<String> = self
                    .store
                    .endpoints
                    .split(',')
                    .map(str::to_string)
                    .collect();
                return futures::future::join_all(endpoints.iter().map(|e| self.status(e))).await;
            }
        };
        futures::future::join_all(members.iter().map(|m| async move {
            match m.client_urls.first() {
                Some(url) => {
                    let mut status = self.status(url).await;
                    status.member_id = m.id;
                    status.name = m.name.clone();
                    status
                }
                None => EndpointStatus {
                    endpoint: String::new(),
                    member_id: m.id,
                    name: m.name.clone(),
                    leader_id: None,
                    raft_term: 0,
                    raft_index: 0,
                    db_size: 0,
                    version: String::new(),
                    errors: Vec::new(),
                    error: Some(format!(
                        "member {:x} ({}) has not started",
                        m.id,
                        m.peer_urls.join(",")
                    )),
                },
            }
        }))
        .await
    }

    /// When member `from` (e.g. the one beside this manager) is the raft leader, moves the
    /// leadership to the other voting member that answers with the most of the log (highest
    /// raft index) and returns its id; `None` when `from` does not lead. So one host's death
    /// never costs an etcd election and the orch leader's lease at once.
    pub async fn move_leader_away(&self, from: u64) -> Result<Option<u64>, StoreError> {
        if self.leader_id().await? != Some(from) {
            return Ok(None);
        }
        let list = self
            .call(|mut c| async move { c.member_list().await })
            .await?;
        let candidates: Vec<Member> = list
            .members()
            .iter()
            .map(|m| member_of(m, None))
            .filter(|m| m.id != from && !m.is_learner && !m.client_urls.is_empty())
            .collect();
        let statuses = futures::future::join_all(
            candidates
                .iter()
                .map(|m| async move { (m.id, self.status(&m.client_urls[0]).await) }),
        )
        .await;
        let target = statuses
            .into_iter()
            .filter(|(_, s)| s.error.is_none() && s.leader_id == Some(from))
            .max_by_key(|(_, s)| s.raft_index)
            .map(|(id, _)| id)
            .ok_or_else(|| {
                unavailable(
                    &self.store.endpoints,
                    format!("no other member of the etcd cluster to move the leadership from {from:x} to (none answers, or none follows it)"),
                )
            })?;
        self.move_leader(target).await?;
        Ok(Some(target))
    }

    /// Moves raft leadership to member `target` (asked of the current leader, as etcd
    /// requires). Nothing to do when `target` leads already.
    pub async fn move_leader(&self, target: u64) -> Result<(), StoreError> {
        let list = self
            .call(|mut c| async move { c.member_list().await })
            .await?;
        let members: Vec<Member> = list.members().iter().map(|m| member_of(m, None)).collect();
        if !members.iter().any(|m| m.id == target) {
            let ids: Vec<String> = members
                .iter()
                .map(|m| format!("{:x} ({})", m.id, m.name))
                .collect();
            return Err(StoreError::Other(
                format!(
                    "etcd move leader: {target:x} is not a member (members: {})",
                    ids.join(", ")
                )
                .into(),
            ));
        }
        let leader = self
            .leader_id()
            .await?
            .ok_or_else(|| no_quorum(&self.store.endpoints, "cannot move the leadership"))?;
        if leader == target {
            return Ok(());
        }
        let urls = members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.client_urls.clone())
            .unwrap_or_default();
        if urls.is_empty() {
            return Err(unavailable(
                &self.store.endpoints,
                format!("the leader {leader:x} has no client URL to ask"),
            ));
        }
        let mut client = self.store.client_of(&urls).await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, client.move_leader(target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(map_err(&urls.join(","), e)),
            Err(_) => Err(unavailable(
                &urls.join(","),
                format!("moving the leadership to {target:x} timed out"),
            )),
        }
    }
}
