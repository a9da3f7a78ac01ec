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
    api: Option<Arc<orch_api::server::Backend>>,
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
        Limits::default(),
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
    let mut r = orch_core::engine::replication::new_replica(svc);
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
    use orch_api::protocol::{ManifestText, Request, Response, WatchType};
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let backend = Arc::new(orch_api::server::Backend {
        store: store.clone(),
        runtimes: Default::default(),
        store_name: "memory".into(),
        scheduler: Arc::new(orch_sched::DefaultScheduler),
        on_node_removed: None,
        nodes: None,
        port_check: None,
        volumes: Default::default(),
    });
    let m = start_with(store, Some(backend)).await;
    let admin = m
        .manager
        .admin_credentials("alice", Duration::from_secs(600))
        .unwrap();
    let client = orch_api::Client::remote(&m.addr, &admin).unwrap();
    let info = client.call(Request::Info).await.unwrap();
    assert!(
        matches!(info, Response::Info { ref store, .. } if store == "memory"),
        "{info:?}"
    );
    let mut watch = client
        .stream(Request::Watch {
            kind: orch_core::model::object::Kind::Service,
            namespace: None,
            since: None,
        })
        .await
        .unwrap();
    client
        .call(Request::Apply {
            manifests: vec![ManifestText {
                source: "web.yaml".into(),
                text: "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [sleep, '1']\n".into(),
            }],
            dry_run: false,
            namespace: None,
        })
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, Response::Watch { event: WatchType::Added, object } if object.metadata().name == "web"),
        "{first:?}"
    );
    // Bad input gets the API's own error, named.
    let e = client
        .call(Request::Scale {
            namespace: "default".into(),
            name: "web".into(),
            replicas: -1,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("replicas"), "{e}");

    // Over the 4 MiB message limit: refused, and the error says which limit.
    let e = client
        .call(Request::Apply {
            manifests: vec![ManifestText {
                source: "big.yaml".into(),
                text: "#".repeat(5 << 20),
            }],
            dry_run: true,
            namespace: None,
        })
        .await
        .unwrap_err()
        .to_string();
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
        .call(Request::Info)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("may not use the administrators' API"),
        "{e}"
    );
}
