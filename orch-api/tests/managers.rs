//! Several managers over one store: a `RemoteStore` and the API client fail over to the next
//! manager when the one they use dies (its runtime dropped, its connections cut, as a kill
//! does); `Cluster/JoinManager` admits a manager with the manager token only and grants it the
//! CA, tokens and store; revocations made at one manager are refused at the other; `get
//! managers` and `manager rm` answer from the records, the leader and the etcd members.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use orch_api::grpc::cluster::{
    self, JoinError, JoiningManager, Manager, ManagerAdmission, StoreGrant,
};
use orch_api::handler::Backend;
use orch_api::managers::{
    EtcdMember, EtcdMemberRef, EtcdView, ManagerAccess, ManagerRecord, REVOKED_PREFIX,
};
use orch_api::protocol::ManagerRole;
use orch_core::memstore::MemStore;
use orch_core::store::{Op, Store, WatchEvent};

/// One manager serving `store` on its own runtime (its own thread), so that [`Served::kill`]
/// drops every task and connection of it at once.
struct Served {
    addr: String,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(manager: Arc<Manager>, store: Arc<dyn Store>, api: Option<Arc<Backend>>) -> Served {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (listener, addr) = cluster::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(addr.to_string()).unwrap();
                let cancel = tokio_util::sync::CancellationToken::new();
                tokio::select! {
                    r = cluster::serve(listener, manager, store, api, Default::default(), cancel) => {
                        r.unwrap();
                    }
                    _ = killed => {}
                }
            });
            // Dropping the runtime ends every connection task: the manager is gone.
            drop(rt);
        });
        Served {
            addr: addr_rx.recv().unwrap(),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies the first manager's CA and tokens into a second cluster directory (as
/// `JoinManager` does).
fn second_dir(first: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "ca.key", "worker.token", "manager.token"] {
        std::fs::copy(first.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn open(dir: &std::path::Path) -> Arc<Manager> {
    Arc::new(Manager::open(dir, Duration::from_secs(3600)).unwrap())
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Create {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_store_fails_over_to_the_next_manager_and_watches_resume_there() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let d1 = tempfile::tempdir().unwrap();
    let m1 = open(d1.path());
    let d2 = second_dir(d1.path());
    let m2 = open(d2.path());
    let mut s1 = Served::start(m1.clone(), store.clone(), None);
    let s2 = Served::start(m2, store.clone(), None);
    let token = m1.worker_token().unwrap().to_string();
    let creds = cluster::join(&s1.addr, &token, "n1").await.unwrap();
    let remote = cluster::remote_store_any(&[s1.addr.clone(), s2.addr.clone()], &creds).unwrap();
    assert_eq!(remote.current(), s1.addr);

    let r1 = remote
        .txn(vec![put("/events/default/a", "1")])
        .await
        .unwrap();
    let mut watch = remote.watch("/events/", r1).await.unwrap();
    let r2 = remote
        .txn(vec![put("/events/default/b", "2")])
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(batch.revision, r2);

    // The first manager dies: the watch on it ends with an error, the next call goes to
    // the second manager (which is used from then on), and a watch from the last revision
    // seen resumes there with what was written meanwhile.
    s1.kill();
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch on a dead manager ends");
    assert!(
        matches!(ended, Some(Err(_)) | None),
        "the watch on the dead manager ends: {ended:?}"
    );
    let r3 = remote
        .txn(vec![put("/events/default/c", "3")])
        .await
        .expect("a write fails over to the second manager");
    assert_eq!(remote.current(), s2.addr);
    assert_eq!(remote.managers(), [s2.addr.clone(), s1.addr.clone()]);
    let mut resumed = remote.watch("/events/", r2).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(batch.revision, r3);
    assert!(matches!(&batch.events[0], WatchEvent::Put(kv) if kv.key == "/events/default/c"));
    assert_eq!(
        &*remote
            .get("/events/default/a")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"1"
    );

    // A list of managers can be replaced; the one in use stays in use.
    remote
        .set_managers(&["127.0.0.1:1".into(), s2.addr.clone()])
        .unwrap();
    assert_eq!(remote.current(), s2.addr);
    remote.revision().await.unwrap();

    // With every manager gone, the error names each one tried.
    drop(s2);
    let e = remote.revision().await.unwrap_err().to_string();
    assert!(e.contains("no manager answered"), "{e}");
    assert!(e.contains("127.0.0.1:1"), "{e}");
}

/// Admits every manager: a fixed grant, recording whom it admitted.
#[derive(Default)]
struct Admit {
    admitted: Mutex<Vec<JoiningManager>>,
}

#[async_trait]
impl ManagerAdmission for Admit {
    async fn admit(&self, joining: &JoiningManager) -> Result<StoreGrant, String> {
        self.admitted.lock().unwrap().push(joining.clone());
        Ok(StoreGrant {
            secret_keys: "key-1 0123\n".into(),
            etcd_endpoints: vec!["https://10.0.0.1:2379".into()],
            store_prefix: "/orch".into(),
            etcd_tls: true,
            etcd_member: joining.etcd_peer_url.as_ref().map(|p| {
                (
                    0xabc,
                    format!("m1=https://10.0.0.1:2380,{}={p}", joining.name),
                )
            }),
        })
    }
}

fn record(name: &str, address: &str) -> ManagerRecord {
    ManagerRecord {
        name: name.into(),
        address: address.into(),
        etcd: None,
        started: "2026-01-02T03:04:05Z".into(),
        version: "0.1.0".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_manager_admits_the_manager_token_only_and_grants_the_cluster() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path());
    let cancel = tokio_util::sync::CancellationToken::new();
    let _shared = m.share(store.clone(), cancel.clone());
    let served = Served::start(m.clone(), store.clone(), None);
    let joining = JoiningManager {
        name: "m2".into(),
        address: "10.0.0.2:7443".into(),
        etcd_peer_url: Some("https://10.0.0.2:2380".into()),
    };
    let manager_token = m.manager_token().unwrap().to_string();

    // Before it admits managers (no shared store of its own), it says why not.
    let e = cluster::join_manager(&served.addr, &manager_token, &joining)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JoinError::Refused { message, .. } if message.contains("admits no other managers")),
        "{e}"
    );
    let admit = Arc::new(Admit::default());
    m.admit_managers(admit.clone());

    // The worker token, or a wrong secret: refused, saying which token is needed.
    let worker = m.worker_token().unwrap().to_string();
    let e = cluster::join_manager(&served.addr, &worker, &joining)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid manager token"), "{e}");
    let wrong = format!("{}0", &manager_token[..manager_token.len() - 1]);
    let e = cluster::join_manager(&served.addr, &wrong, &joining)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid manager token"), "{e}");
    assert!(admit.admitted.lock().unwrap().is_empty());

    // A name a running manager has: refused.
    store
        .txn(vec![Op::Create {
            key: ManagerRecord::key_of("m1"),
            value: record("m1", &served.addr).encode(),
        }])
        .await
        .unwrap();
    let same = JoiningManager {
        name: "m1".into(),
        ..joining.clone()
    };
    let e = cluster::join_manager(&served.addr, &manager_token, &same)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("a manager named m1 is running"), "{e}");

    // The manager token: the CA and its key, both tokens, the managers, the store.
    let grant = cluster::join_manager(&served.addr, &manager_token, &joining)
        .await
        .unwrap();
    assert_eq!(
        *admit.admitted.lock().unwrap(),
        std::slice::from_ref(&joining)
    );
    assert_eq!(grant.manager_token, manager_token);
    assert_eq!(grant.worker_token, worker);
    assert_eq!(grant.managers, std::slice::from_ref(&served.addr));
    assert_eq!(grant.store.store_prefix, "/orch");
    assert!(grant.store.etcd_tls);
    assert_eq!(
        grant.store.etcd_member,
        Some((
            0xabc,
            "m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380".into()
        ))
    );
    assert!(
        !format!("{grant:?}").contains("BEGIN"),
        "Debug redacts keys"
    );
    let installed = tempfile::tempdir().unwrap();
    Manager::install(installed.path(), &grant).unwrap();
    let m2 = open(installed.path());
    assert_eq!(m2.manager_token().unwrap().to_string(), manager_token);
    // The same CA: credentials the new manager issues are good at the first.
    let admin = m2
        .admin_credentials("ops", Duration::from_secs(600))
        .unwrap();
    let store_at_first = cluster::remote_store(&served.addr, &admin).unwrap();
    store_at_first.revision().await.unwrap();
    // Installing over another cluster's CA is refused.
    let other = tempfile::tempdir().unwrap();
    let _ = open(other.path());
    let e = Manager::install(other.path(), &grant)
        .unwrap_err()
        .to_string();
    assert!(e.contains("CA of another cluster"), "{e}");

    // Joining nodes and administrators learn every manager's address.
    let joined = cluster::join_as(&served.addr, &manager_token, "alice", true)
        .await
        .unwrap();
    assert_eq!(joined.managers, std::slice::from_ref(&served.addr));
    store
        .txn(vec![Op::Create {
            key: ManagerRecord::key_of("m3"),
            value: record("m3", "10.0.0.3:7443").encode(),
        }])
        .await
        .unwrap();
    let joined = cluster::join_as(&served.addr, &worker, "n1", false)
        .await
        .unwrap();
    assert_eq!(
        joined.managers,
        [served.addr.clone(), "10.0.0.3:7443".to_string()]
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_at_one_manager_is_refused_at_the_other() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let d1 = tempfile::tempdir().unwrap();
    let m1 = open(d1.path());
    // A revocation m1 made before it shared its store is copied there.
    m1.revoke("old");
    let d2 = second_dir(d1.path());
    let m2 = open(d2.path());
    let cancel = tokio_util::sync::CancellationToken::new();
    let _a = m1.share(store.clone(), cancel.clone());
    let _b = m2.share(store.clone(), cancel.clone());
    let s2 = Served::start(m2.clone(), store.clone(), None);
    eventually("the old revocation shared", || async {
        m2.is_revoked("old").then_some(())
    })
    .await;
    assert!(store
        .get(&format!("{REVOKED_PREFIX}old"))
        .await
        .unwrap()
        .is_some());

    let token = m1.worker_token().unwrap().to_string();
    let creds = cluster::join(&s2.addr, &token, "n1").await.unwrap();
    let node = cluster::remote_store(&s2.addr, &creds).unwrap();
    node.revision().await.unwrap();
    m1.revoke("n1");
    eventually("m2 refuses n1", || async {
        node.revision().await.is_err().then_some(())
    })
    .await;
    let e = node.revision().await.unwrap_err().to_string();
    assert!(e.contains("node n1 was removed"), "{e}");
    // Joining again (at m2) lifts it at m1 too.
    cluster::join(&s2.addr, &token, "n1").await.unwrap();
    eventually("m1 admits n1 again", || async {
        (!m1.is_revoked("n1")).then_some(())
    })
    .await;
    cancel.cancel();
}

/// A manager's view for the handler: a fixed leader and etcd cluster; removed members
/// disappear from it.
struct Access {
    own: ManagerRecord,
    leader: Option<String>,
    etcd: Mutex<Option<EtcdView>>,
}

#[async_trait]
impl ManagerAccess for Access {
    fn own(&self) -> ManagerRecord {
        self.own.clone()
    }
    async fn leader(&self) -> Option<String> {
        self.leader.clone()
    }
    async fn etcd(&self) -> Result<Option<EtcdView>, String> {
        Ok(self.etcd.lock().unwrap().clone())
    }
    async fn remove_etcd_member(&self, id: u64) -> Result<(), String> {
        let mut v = self.etcd.lock().unwrap();
        let v = v.as_mut().ok_or("no etcd")?;
        v.members.retain(|m| m.id != id);
        v.health.remove(&id);
        Ok(())
    }
}

fn member(id: u64, name: &str) -> EtcdMember {
    EtcdMember {
        id,
        name: name.into(),
        peer_urls: vec![format!("https://10.0.0.{id}:2380")],
        client_urls: vec![format!("https://10.0.0.{id}:2379")],
        is_leader: id == 1,
    }
}

fn with_member(name: &str, id: u64) -> ManagerRecord {
    ManagerRecord {
        etcd: Some(EtcdMemberRef {
            member_id: id,
            peer_url: format!("https://10.0.0.{id}:2380"),
            client_url: format!("https://10.0.0.{id}:2379"),
        }),
        ..record(name, &format!("10.0.0.{id}:7443"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_managers_and_manager_rm_over_the_api_and_a_client_that_fails_over() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    for r in [with_member("m1", 1), with_member("m2", 2)] {
        store
            .txn(vec![Op::Create {
                key: r.key(),
                value: r.encode(),
            }])
            .await
            .unwrap();
    }
    let access = Arc::new(Access {
        own: with_member("m1", 1),
        leader: Some("m2".into()),
        etcd: Mutex::new(Some(EtcdView {
            members: vec![member(1, "m1"), member(2, "m2"), member(3, "m3")],
            health: BTreeMap::from([
                (1, "healthy".to_string()),
                (2, "healthy".to_string()),
                (3, "unreachable: connection refused".to_string()),
            ]),
        })),
    });
    let backend = Arc::new(Backend {
        store: store.clone(),
        runtimes: Default::default(),
        store_name: "memory".into(),
        scheduler: Arc::new(orch_sched::DefaultScheduler),
        on_node_removed: None,
        nodes: None,
        port_check: None,
        managers: Some(access.clone()),
        volumes: Default::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path());
    let served = Served::start(m.clone(), store.clone(), Some(backend));
    let admin = m
        .admin_credentials("alice", Duration::from_secs(600))
        .unwrap();
    // A client that knows a dead manager first goes on to the live one.
    let dead = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let client =
        orch_api::Client::remote_any(&[dead.clone(), served.addr.clone()], &admin).unwrap();
    let rows = client.managers().await.unwrap();
    assert_eq!(client.managers_known(), [served.addr.clone(), dead.clone()]);
    let got: Vec<(&str, ManagerRole, Option<&str>)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.role, r.etcd_health.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("m1", ManagerRole::Standby, Some("healthy")),
            ("m2", ManagerRole::Leader, Some("healthy")),
            (
                "m3",
                ManagerRole::Down,
                Some("unreachable: connection refused")
            ),
        ]
    );
    let table = orch_api::render::managers_table(&rows, false);
    assert!(
        table.starts_with("NAME   ADDRESS         ROLE      ETCD-MEMBER   ETCD-HEALTH"),
        "{table}"
    );

    // The one answering, or one that is not there: refused, saying why.
    let e = client.manager_remove("m1").await.unwrap_err().to_string();
    assert!(e.contains("is the one answering this request"), "{e}");
    let e = client.manager_remove("m9").await.unwrap_err().to_string();
    assert!(
        e.contains("no manager \"m9\" (managers: m1, m2, m3)"),
        "{e}"
    );
    // A dead manager's etcd member (no record), then a running one's member and record.
    assert_eq!(
        client.manager_remove("m3").await.unwrap().as_deref(),
        Some("3")
    );
    assert_eq!(
        client.manager_remove("m2").await.unwrap().as_deref(),
        Some("2")
    );
    assert!(store
        .get(&ManagerRecord::key_of("m2"))
        .await
        .unwrap()
        .is_none());
    let names: Vec<String> = client
        .managers()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["m1"]);
    // The last one stays.
    let e = client.manager_remove("m1").await.unwrap_err().to_string();
    assert!(e.contains("is the only manager"), "{e}");
}

/// A store whose watches never deliver anything (as behind an etcd member that froze).
struct Quiet(MemStore);

#[async_trait]
impl Store for Quiet {
    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<orch_core::store::KeyValue>, orch_core::store::StoreError> {
        self.0.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<(Vec<orch_core::store::KeyValue>, u64), orch_core::store::StoreError> {
        self.0.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<u64, orch_core::store::StoreError> {
        self.0.txn(ops).await
    }
    async fn watch(
        &self,
        _: &str,
        _: u64,
    ) -> Result<orch_core::store::WatchStream, orch_core::store::StoreError> {
        Ok(Box::pin(futures::stream::pending()))
    }
    async fn revision(&self) -> Result<u64, orch_core::store::StoreError> {
        self.0.revision().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_stalls_behind_a_write_ends_so_the_cache_lists_again() {
    let store: Arc<dyn Store> = Arc::new(Quiet(MemStore::new()));
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path());
    let served = Served::start(m.clone(), store, None);
    let admin = m.admin_credentials("a", Duration::from_secs(600)).unwrap();
    let remote = cluster::remote_store_any(std::slice::from_ref(&served.addr), &admin).unwrap();
    let rev = remote.revision().await.unwrap();
    let mut everything = remote.watch("/", rev).await.unwrap();
    let mut events = remote.watch("/events/", rev).await.unwrap();
    // Quiet while nothing was written through this store.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), everything.next())
            .await
            .is_err(),
        "no write, no stall"
    );
    let started = tokio::time::Instant::now();
    remote
        .txn(vec![put("/events/default/x", "1")])
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), everything.next())
        .await
        .expect("the stalled watch ends")
        .expect("with an error");
    let e = ended.unwrap_err().to_string();
    assert!(e.contains("stalled"), "{e}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // A watch of one prefix is not judged so (not every write shows in it).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.next())
            .await
            .is_err()
    );
}
