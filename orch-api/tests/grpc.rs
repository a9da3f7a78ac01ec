//! The cluster protocol on the wire: the store served over gRPC with mutual TLS passes the
//! store conformance suite; joining checks the manager's CA against the token; anonymous and
//! wrong-token callers are refused; a node may write only its own node and the status of its
//! own replicas.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orch_api::grpc::cluster::{self, Credentials, JoinError, Limits, Manager};
use orch_api::grpc::store::RemoteStore;
use orch_core::memstore::MemStore;
use orch_core::model::object::{Object, Replica};
use orch_core::store::{
    create_op, update_op, KeyValue, Op, Revision, Store, StoreError, WatchStream,
};
use orch_store::Compact;
use tokio_util::sync::CancellationToken;

/// A manager serving `store` on a free loopback port.
struct TestManager {
    addr: String,
    manager: Arc<Manager>,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestManager {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(store: Arc<dyn Store>) -> TestManager {
    start_with(store, None).await
}

async fn start_with(
    store: Arc<dyn Store>,
    api: Option<Arc<orch_api::handler::Backend>>,
) -> TestManager {
    start_limited(store, api, Limits::default()).await
}

async fn start_limited(
    store: Arc<dyn Store>,
    api: Option<Arc<orch_api::handler::Backend>>,
    limits: Limits,
) -> TestManager {
    let dir = tempfile::tempdir().unwrap();
    let manager = Arc::new(Manager::open(dir.path(), Duration::from_secs(3600)).unwrap());
    let (listener, addr) = cluster::bind("127.0.0.1:0").await.unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(cluster::serve(
        listener,
        manager.clone(),
        store,
        api,
        limits,
        cancel.clone(),
    ));
    TestManager {
        addr: addr.to_string(),
        manager,
        cancel,
        _dir: dir,
    }
}

/// The remote store with compaction reaching through to the store behind it.
struct Remote {
    remote: RemoteStore,
    backend: Arc<MemStore>,
    _manager: TestManager,
}

#[async_trait]
impl Store for Remote {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.remote.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.remote.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.remote.txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.remote.watch(prefix, after).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.remote.revision().await
    }
}

#[async_trait]
impl Compact for Remote {
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        MemStore::compact(&self.backend, revision);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_over_mutual_tls_conforms() {
    orch_store::conformance::run_all(|| async {
        let backend = Arc::new(MemStore::new());
        let m = start(backend.clone()).await;
        let admin = m
            .manager
            .admin_credentials("test", Duration::from_secs(600))
            .unwrap();
        Remote {
            remote: cluster::remote_store(&m.addr, &admin).unwrap(),
            backend,
            _manager: m,
        }
    })
    .await;
}

fn replica_on(node: Option<&str>) -> Replica {
    let objs = orch_core::model::manifest::parse(
        "web.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [sleep, '100']\n",
    )
    .unwrap();
    let Object::Service(svc) = &objs[0] else {
        panic!()
    };
    let mut r = orch_core::engine::replication::new_replica(svc, &[]);
    r.spec.node = node.map(String::from);
    r
}

fn refused(e: StoreError) -> String {
    let m = e.to_string();
    assert!(m.contains("refused") || m.contains("may not"), "{m}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_then_a_node_writes_only_what_is_its_own() {
    let backend: Arc<dyn Store> = Arc::new(MemStore::new());
    let m = start(backend.clone()).await;
    let token = m.manager.worker_token().unwrap().to_string();

    let creds = cluster::join(&m.addr, &token, "n1").await.expect("join");
    assert_eq!(m.manager.joined(), ["n1"]);
    let lifetime = creds.not_after().unwrap() - time_now();
    assert!((3500..=3700).contains(&lifetime), "{lifetime}");
    let dir = tempfile::tempdir().unwrap();
    creds.save(dir.path()).unwrap();
    let loaded = Credentials::load(dir.path()).unwrap().unwrap();
    let node = Arc::new(cluster::remote_store(&m.addr, &loaded).unwrap());

    // Its own node object: yes. Another node's: no.
    let own = node_named("n1");
    node.txn(vec![create_op(&Object::Node(own))]).await.unwrap();
    let other = node_named("n2");
    let e = refused(
        node.txn(vec![create_op(&Object::Node(other))])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("/nodes/n2"), "{e}");

    // Its node's status, yes; its network lease (the manager's) or its cordon, no.
    let kv = backend.get("/nodes/n1").await.unwrap().unwrap();
    let Ok(Object::Node(stored)) = Object::decode(&kv.value, kv.mod_revision) else {
        panic!("a node object");
    };
    let mut beat = stored.clone();
    beat.status.max_replicas = 7;
    node.txn(vec![update_op(&Object::Node(beat))])
        .await
        .unwrap();
    let kv = backend.get("/nodes/n1").await.unwrap().unwrap();
    let Ok(Object::Node(stored)) = Object::decode(&kv.value, kv.mod_revision) else {
        panic!("a node object");
    };
    let mut leased = stored.clone();
    leased.spec.network = Some(orch_core::model::object::NodeNetwork {
        subnet: "10.244.9.0/24".into(),
        cluster_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/16".into(),
        mode: Default::default(),
    });
    let e = refused(
        node.txn(vec![update_op(&Object::Node(leased))])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("network lease"), "{e}");
    let mut uncordoned = stored;
    uncordoned.spec.unschedulable = true;
    let e = refused(
        node.txn(vec![update_op(&Object::Node(uncordoned))])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("cordon"), "{e}");

    // Replicas: the status of its own, yes; a replica elsewhere, a spec change, a create: no.
    let mine = replica_on(Some("n1"));
    let theirs = replica_on(Some("n2"));
    backend
        .txn(vec![
            create_op(&Object::Replica(mine.clone())),
            create_op(&Object::Replica(theirs.clone())),
        ])
        .await
        .unwrap();
    let read = |r: &Replica| {
        let key = Object::Replica(r.clone()).key();
        let node = node.clone();
        async move {
            let kv = node.get(&key).await.unwrap().unwrap();
            match Object::decode(&kv.value, kv.mod_revision).unwrap() {
                Object::Replica(r) => r,
                _ => unreachable!(),
            }
        }
    };
    let mut r = read(&mine).await;
    r.status.message = "running".into();
    node.txn(vec![update_op(&Object::Replica(r.clone()))])
        .await
        .expect("status of its own replica");
    let mut r = read(&mine).await;
    r.spec.node = Some("n2".into());
    let e = refused(
        node.txn(vec![update_op(&Object::Replica(r))])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("only a replica's status"), "{e}");
    let mut t = read(&theirs).await;
    t.status.message = "hijacked".into();
    let e = refused(
        node.txn(vec![update_op(&Object::Replica(t))])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("not bound to this node"), "{e}");
    let e = refused(
        node.txn(vec![create_op(&Object::Replica(replica_on(Some("n1"))))])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("do not create replicas"), "{e}");
    // Services and everything else: no.
    let svc = orch_core::model::manifest::parse(
        "s.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: evil}\nspec:\n  template:\n    command: [sh]\n",
    )
    .unwrap()
    .remove(0);
    refused(node.txn(vec![create_op(&svc)]).await.unwrap_err());
    // A refused transaction changed nothing.
    assert!(backend.get(&svc.key()).await.unwrap().is_none());
    // Routes: every node reads them (its endpoints controller publishes them), writes none.
    let route = orch_core::model::manifest::parse(
        "r.yaml",
        "apiVersion: orch/v1\nkind: Route\nmetadata: {name: front}\nspec:\n  selector: {matchLabels: {app: web}}\n  headless: true\n",
    )
    .unwrap()
    .remove(0);
    refused(node.txn(vec![create_op(&route)]).await.unwrap_err());
    backend.txn(vec![create_op(&route)]).await.unwrap();
    assert!(node.get(&route.key()).await.unwrap().is_some());
    let (listed, _) = node.list("/routes/").await.unwrap();
    assert_eq!(listed.len(), 1);

    // Secrets: never in a node's lists or watches; readable one at a time only while a
    // replica bound to the node uses it.
    let secret = |name: &str| {
        orch_core::model::manifest::parse(
            "s.yaml",
            &format!(
                "apiVersion: orch/v1\nkind: Secret\nmetadata: {{name: {name}}}\ndata: {{k: v}}\n"
            ),
        )
        .unwrap()
        .remove(0)
    };
    let (db, other) = (secret("db"), secret("other"));
    let mut watch = node
        .watch("/", backend.revision().await.unwrap())
        .await
        .unwrap();
    backend
        .txn(vec![create_op(&db), create_op(&other)])
        .await
        .unwrap();
    let (listed, _) = node.list("/").await.unwrap();
    assert!(listed.iter().all(|kv| !kv.key.starts_with("/secrets/")));
    let batch = futures::StreamExt::next(&mut watch).await.unwrap().unwrap();
    assert!(batch.events.is_empty(), "{batch:?}");
    let e = node.get(&db.key()).await.unwrap_err().to_string();
    assert!(e.contains("no replica bound to it uses"), "{e}");
    let mut uses = read(&mine).await;
    let mut t = (*uses.spec.template).clone();
    t.mounts.push(orch_core::model::object::Mount {
        path: "/run/secrets/db".into(),
        secret: Some("db".into()),
        ..Default::default()
    });
    uses.spec.template = t.into();
    backend
        .txn(vec![update_op(&Object::Replica(uses))])
        .await
        .unwrap();
    assert!(node.get(&db.key()).await.unwrap().is_some());
    assert!(node.get(&other.key()).await.is_err());

    // Renewal: a new certificate for the same node, and it works.
    let renewed = cluster::renew(&m.addr, &loaded).await.expect("renew");
    assert_ne!(renewed.cert_pem, loaded.cert_pem);
    let again = cluster::remote_store(&m.addr, &renewed).unwrap();
    let mut r = read(&mine).await;
    r.status.message = "after renewal".into();
    again
        .txn(vec![update_op(&Object::Replica(r))])
        .await
        .unwrap();
}

fn node_named(name: &str) -> orch_core::model::object::Node {
    orch_core::model::object::Node {
        metadata: orch_core::model::object::Metadata {
            name: name.into(),
            ..Default::default()
        },
        spec: Default::default(),
        status: Default::default(),
    }
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused() {
    let m = start(Arc::new(MemStore::new())).await;
    let token = m.manager.worker_token().unwrap();

    // A wrong secret, a token of another cluster, a rotated token.
    let mut wrong = token.clone();
    wrong.secret = "0".repeat(40);
    let e = cluster::join(&m.addr, &wrong.to_string(), "n1")
        .await
        .unwrap_err();
    assert!(
        matches!(e, JoinError::Refused { .. }) && e.to_string().contains("invalid join token"),
        "{e}"
    );
    let mut other = token.clone();
    other.ca_digest = "ab".repeat(32);
    let e = cluster::join(&m.addr, &other.to_string(), "n1")
        .await
        .unwrap_err();
    assert!(matches!(e, JoinError::WrongCa { .. }), "{e}");
    let rotated = m.manager.rotate_worker_token().unwrap();
    let e = cluster::join(&m.addr, &token.to_string(), "n1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid join token"), "{e}");
    cluster::join(&m.addr, &rotated.to_string(), "n1")
        .await
        .expect("the new token admits");
    let e = cluster::join(&m.addr, &rotated.to_string(), "Not_A_Name")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Not_A_Name"), "{e}");

    // Administrators log in with the manager token; the two tokens do not stand in for
    // each other; a rotated manager token is refused.
    let mt = m.manager.manager_token().unwrap().to_string();
    let admin = cluster::login(&m.addr, &mt, "alice").await.expect("login");
    cluster::remote_store(&m.addr, &admin)
        .unwrap()
        .txn(vec![Op::Create {
            key: "/services/default/by-admin".into(),
            value: b"{}".to_vec(),
        }])
        .await
        .expect("an administrator writes anything");
    let e = cluster::login(&m.addr, &rotated.to_string(), "bob")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid manager token"), "{e}");
    let e = cluster::join(&m.addr, &mt, "n9").await.unwrap_err();
    assert!(e.to_string().contains("invalid join token"), "{e}");
    m.manager.rotate_manager_token().unwrap();
    let e = cluster::login(&m.addr, &mt, "carol").await.unwrap_err();
    assert!(e.to_string().contains("invalid manager token"), "{e}");

    // A client that trusts the CA but has no certificate: the store refuses it.
    let ca = cluster::fetch_ca(&m.addr, &token.ca_digest).await.unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name(orch_api::grpc::MANAGER_NAME);
    let ch = tonic::transport::Channel::from_shared(format!("https://{}", m.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let anon = RemoteStore::new(ch, &m.addr);
    let e = anon
        .get("/services/default/web")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("anonymous requests are refused"), "{e}");

    // A certificate from another cluster's CA: the TLS handshake fails.
    let elsewhere = start(Arc::new(MemStore::new())).await;
    let foreign = elsewhere
        .manager
        .admin_credentials("x", Duration::from_secs(60))
        .unwrap();
    let forged = Credentials {
        ca_pem: ca.clone(),
        ..foreign
    };
    let e = cluster::remote_store(&m.addr, &forged)
        .unwrap()
        .get("/x")
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(_) | StoreError::Other(_)),
        "{e}"
    );
}

/// `orchctl` over the network: the administrators' API carries the local socket's requests
/// (one-shot and streaming) for an administrator's certificate, and refuses a node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_grpc_serves_administrators_only() {
    use futures::StreamExt;
    use orch_api::client::WatchEvent;
    use orch_api::protocol::{ManifestText, WatchType};
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let backend = Arc::new(orch_api::handler::Backend {
        store: store.clone(),
        runtimes: Default::default(),
        store_name: "memory".into(),
        scheduler: Arc::new(orch_sched::DefaultScheduler),
        on_node_removed: None,
        nodes: None,
        port_check: None,
        managers: None,
        volumes: Default::default(),
    });
    let m = start_with(store, Some(backend)).await;
    let admin = m
        .manager
        .admin_credentials("alice", Duration::from_secs(600))
        .unwrap();
    let client = orch_api::Client::remote(&m.addr, &admin).unwrap();
    let info = client.info().await.unwrap();
    assert!(info.store == "memory", "{info:?}");
    let mut watch = client
        .watch(orch_core::model::object::Kind::Service, None, None)
        .await
        .unwrap();
    let web = vec![ManifestText {
        source: "web.yaml".into(),
        text: "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [sleep, '1']\n".into(),
    }];
    client.apply(web, false, None).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, WatchEvent { event: WatchType::Added, object } if object.metadata().name == "web"),
        "{first:?}"
    );
    // Bad input gets the API's own error, named.
    let e = client.scale("default", "web", -1).await.unwrap_err();
    assert!(e.to_string().contains("replicas"), "{e}");

    // Over the 4 MiB message limit: refused, and the error says which limit.
    let big = vec![ManifestText {
        source: "big.yaml".into(),
        text: "#".repeat(5 << 20),
    }];
    let e = client.apply(big, true, None).await.unwrap_err().to_string();
    assert!(e.contains("4194304") && e.contains("limit"), "{e}");
    // A client that does not check first: the server refuses, naming its limit.
    let ch = cluster::channel(&m.addr, &admin).unwrap();
    let raw = orch_api::grpc::pb::api_client::ApiClient::new(ch)
        .max_encoding_message_size(16 << 20)
        .call(orch_api::grpc::pb::ApiMessage {
            json: "x".repeat(5 << 20),
        })
        .await
        .unwrap_err();
    assert!(raw.message().contains("4194304"), "{raw:?}");

    // A node's certificate: refused.
    let token = m.manager.worker_token().unwrap().to_string();
    let node = cluster::join(&m.addr, &token, "n1").await.unwrap();
    let e = orch_api::Client::remote(&m.addr, &node)
        .unwrap()
        .info()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("may not use the administrators' API"),
        "{e}"
    );
}

/// A store whose reads of keys under `/slow/` wait until the gate opens; it counts the reads
/// that got that far.
struct Gated {
    inner: MemStore,
    gate: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Gated {
    fn new() -> Arc<Gated> {
        Arc::new(Gated {
            inner: MemStore::new(),
            gate: tokio::sync::Semaphore::new(0),
            waiting: Default::default(),
        })
    }

    fn open(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    async fn until_waiting(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.waiting.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} reads never reached the store"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl Store for Gated {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        if key.starts_with("/slow/") {
            self.waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(self.gate.acquire().await);
        }
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.inner.txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
}

/// Past the server's concurrency limit, a request is shed at once with `Unavailable` naming
/// the limit (none waits); the requests within it finish, and their slots are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_concurrency_limit_are_shed_naming_it() {
    let store = Gated::new();
    let limits = Limits {
        concurrency: 2,
        ..Limits::default()
    };
    let m = start_limited(store.clone(), None, limits).await;
    let admin = m
        .manager
        .admin_credentials("test", Duration::from_secs(600))
        .unwrap();
    let remote = Arc::new(cluster::remote_store(&m.addr, &admin).unwrap());

    let within: Vec<_> = (0..2)
        .map(|_| {
            let remote = remote.clone();
            tokio::spawn(async move { remote.get("/slow/a").await })
        })
        .collect();
    store.until_waiting(2).await;

    let past: Vec<_> = (0..6)
        .map(|_| {
            let remote = remote.clone();
            tokio::spawn(async move { remote.get("/slow/b").await })
        })
        .collect();
    for call in past {
        let answer = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("a shed request is answered at once, not queued")
            .unwrap();
        match answer {
            Err(StoreError::Unavailable(m)) => assert!(
                m.contains("at most 2 requests at once") && m.contains("concurrency limit"),
                "{m}"
            ),
            other => panic!("expected the limit's refusal, got {other:?}"),
        }
    }
    assert_eq!(
        store.waiting.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "shed requests never reach the store"
    );

    store.open();
    for call in within {
        let answer = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the requests within the limit finish")
            .unwrap();
        assert!(matches!(answer, Ok(None)), "{answer:?}");
    }
    // Their slots were given back.
    for _ in 0..4 {
        remote.get("/slow/c").await.expect("served again");
    }
}

/// The request timeout bounds a call's answer, not a stream that has started: a watch
/// outlives it and still gets its events; a read that takes longer is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_cuts_slow_calls_not_watches() {
    let store = Gated::new();
    let limits = Limits {
        timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    };
    let m = start_limited(store.clone(), None, limits).await;
    let admin = m
        .manager
        .admin_credentials("test", Duration::from_secs(600))
        .unwrap();
    let remote = cluster::remote_store(&m.addr, &admin).unwrap();

    let from = remote.revision().await.unwrap();
    let mut watch = remote.watch("/fast/", from).await.unwrap();
    // Longer than the timeout before the first event.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let node = Object::Node(node_named("n1"));
    let mut op = create_op(&node);
    if let Op::Create { key, .. } = &mut op {
        *key = "/fast/n1".into();
    }
    store.txn(vec![op]).await.unwrap();
    let batch = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut watch),
    )
    .await
    .expect("the watch is still open past the request timeout")
    .expect("an event, not the end")
    .expect("not an error");
    assert_eq!(batch.events.len(), 1, "{batch:?}");
    assert_eq!(batch.events[0].key(), "/fast/n1");

    let answer = tokio::time::timeout(Duration::from_secs(10), remote.get("/slow/a"))
        .await
        .expect("a slow read is cut by the timeout");
    match answer {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("no answer within 300ms"), "{m}")
        }
        other => panic!("expected the timeout's refusal, got {other:?}"),
    }
    store.open();
}
